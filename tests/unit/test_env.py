"""Where a trainer rank is: torchrun's variables, the job id and socket precedence."""

from __future__ import annotations

from pathlib import Path

import pytest

from ecsnap.env import RankEnv, drawn_run_id, job_id_from, job_key_from, layout_from, socket_from


def test_rank_env_from_torchrun_variables() -> None:
    env = RankEnv.from_environ(
        {
            "RANK": "5",
            "WORLD_SIZE": "8",
            "LOCAL_RANK": "1",
            "LOCAL_WORLD_SIZE": "4",
            "GROUP_RANK": "1",
        }
    )
    assert (env.rank, env.local_rank, env.node_rank, env.num_nodes) == (5, 1, 1, 2)
    assert RankEnv.from_environ({}).world_size == 1
    with pytest.raises(ValueError, match="RANK=9"):
        RankEnv.from_environ({"RANK": "9", "WORLD_SIZE": "2"})


def test_job_and_socket_precedence() -> None:
    assert job_id_from(None, {"TORCHELASTIC_RUN_ID": "te", "ECSNAP_JOB": "mine"}) == "mine"
    assert job_id_from(None, {"TORCHELASTIC_RUN_ID": "te"}) == "te"
    assert job_id_from("explicit", {"ECSNAP_JOB": "mine"}) == "explicit"
    assert job_id_from(None, {}) == "default"
    assert socket_from(None, {"ECSNAP_SOCKET": "/s"}) == "/s"
    with pytest.raises(ValueError, match="is not valid"):
        job_id_from("../escape", {})


def test_a_run_id_torchrun_drew_at_random_is_recognized() -> None:
    drawn = "4f319533-aeee-422d-909d-487a0855717e"  # what `torchrun --standalone` sets
    assert drawn_run_id(drawn, {"TORCHELASTIC_RUN_ID": drawn})
    assert not drawn_run_id(drawn, {"TORCHELASTIC_RUN_ID": drawn, "ECSNAP_JOB": drawn})
    assert not drawn_run_id("run42", {"TORCHELASTIC_RUN_ID": "run42"})  # --rdzv-id run42
    assert not drawn_run_id(drawn, {})  # given explicitly


@pytest.mark.parametrize(("group", "parity"), [(300, 1), (4, 4), (4, 0), (1, 1)])
def test_bad_redundancy_is_refused_on_one_node_too(group: int, parity: int) -> None:
    with pytest.raises(ValueError, match="invalid ecsnap redundancy settings"):
        layout_from(1, group, parity, None, env={})


def test_job_key_comes_from_argument_environment_or_file(tmp_path: Path) -> None:
    key = "k" * 32
    assert job_key_from(None, env={}) == b""
    assert job_key_from(key, env={"ECSNAP_JOB_KEY": "other" * 8}) == key.encode()
    assert job_key_from(None, env={"ECSNAP_JOB_KEY": key}) == key.encode()
    f = tmp_path / "key"
    f.write_text(key + "\n")
    assert job_key_from(None, env={"ECSNAP_JOB_KEY_FILE": str(f)}) == key.encode()
    with pytest.raises(ValueError, match="at least 16"):
        job_key_from(None, env={"ECSNAP_JOB_KEY": "short"})
    with pytest.raises(ValueError, match="cannot read the job key file"):
        job_key_from(None, env={"ECSNAP_JOB_KEY_FILE": str(tmp_path / "missing")})
