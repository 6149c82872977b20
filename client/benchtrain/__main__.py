import sys

from ecsnap.benchtrain.runner import main

sys.exit(main(prog="python -m ecsnap.benchtrain"))
