"""accelerate's simple launcher runs ONE process whatever --num_processes says: recognised from its environment."""

from __future__ import annotations

import pytest

from qa.config import make_config
from qa.errors import ConfigError
from qa.preflight.process_count import check_process_count, requested_processes

SIMPLE = {"ACCELERATE_USE_CPU": "False", "ACCELERATE_MIXED_PRECISION": "no"}  # always set by the simple launcher
RENDEZVOUS = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}  # set by it only for > 1 process
ACCELERATE = ["/venv/bin/python", "-m", "accelerate.commands.launch"]


@pytest.mark.parametrize("env, argv, expected", [
    ({**SIMPLE, **RENDEZVOUS}, [*ACCELERATE, "--num_processes", "2", "train.py"], 2),
    ({**SIMPLE, **RENDEZVOUS}, ["/venv/bin/python", "/venv/bin/accelerate", "launch", "--num_processes=8", "t.py"],
     8),
    ({**SIMPLE, **RENDEZVOUS}, [*ACCELERATE, "--config_file", "c.yaml", "train.py"], 0),  # count unknown
    ({**SIMPLE, **RENDEZVOUS}, None, 0),  # no /proc: the rendezvous variables say > 1
    # one process asked for: fine, even with MASTER_ADDR exported by a cluster profile
    ({**SIMPLE, **RENDEZVOUS}, [*ACCELERATE, "--num_processes", "1", "train.py"], None),
    (SIMPLE, [*ACCELERATE, "train.py"], None),
    # torchrun's agent (every multi-process launcher), mpirun, plain python: not the simple launcher
    ({**SIMPLE, **RENDEZVOUS, "TORCHELASTIC_RUN_ID": "x", "WORLD_SIZE": "2"}, None, None),
    ({**SIMPLE, **RENDEZVOUS, "OMPI_COMM_WORLD_SIZE": "2"}, None, None),
    (RENDEZVOUS, ["bash"], None),
])
def test_requested_processes(env: dict, argv: list[str] | None, expected: int | None) -> None:
    assert requested_processes(env, argv) == expected


def test_the_message_gives_the_command_that_works() -> None:
    env, launcher = {**SIMPLE, **RENDEZVOUS}, [*ACCELERATE, "--num_processes", "2", "train.py"]
    cfg = make_config(deepspeed="configs/deepspeed/zero2.json")
    with pytest.raises(ConfigError) as e:
        check_process_count(cfg, env, ["train.py", "--config", "my run.yaml"], launcher)
    msg = str(e.value)
    assert "\n" not in msg and "started this one alone" in msg
    assert ("accelerate launch --num_processes 2 --use_deepspeed --deepspeed_config_file "
            "configs/deepspeed/zero2.json train.py --config 'my run.yaml'") in msg
    with pytest.raises(ConfigError, match=r"accelerate launch --num_processes 2 --multi_gpu train.py"):
        check_process_count(make_config(deepspeed=None), env, ["train.py"], launcher)
