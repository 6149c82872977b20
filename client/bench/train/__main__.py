import sys

from ecsnap.bench.train.runner import main

sys.exit(main(prog="python -m ecsnap.bench.train"))
