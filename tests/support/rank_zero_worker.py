"""One rank of the rank_zero test: real gloo process group through a real Accelerator (CPU)."""

from __future__ import annotations

import json
import sys

import torch.distributed
from accelerate import Accelerator

from qa.distributed.rank_zero import RankZeroError, broadcast_from_rank_zero, on_rank_zero
from qa.errors import ConfigError


def main(out_path: str) -> None:
    acc = Accelerator(cpu=True)
    rank = acc.process_index
    seen: dict[str, object] = {"rank": rank, "world": acc.num_processes}
    seen["result"] = on_rank_zero(acc, lambda: {"chosen_by": acc.process_index})
    seen["broadcast"] = broadcast_from_rank_zero(acc, f"id-from-{rank}")

    def user_mistake() -> None:
        raise ConfigError("resume_from_checkpoint: /x is not a complete checkpoint")

    try:
        on_rank_zero(acc, user_mistake)
    except ConfigError as e:
        seen["user_error"] = [str(e), bool(getattr(e, "reported_by_rank_zero", False))]

    def bug() -> None:
        raise KeyError("oops")

    try:
        on_rank_zero(acc, bug)
    except KeyError as e:
        seen["bug"] = ["KeyError", str(e)]
    except RankZeroError as e:
        seen["bug"] = ["RankZeroError", str(e)]
    acc.wait_for_everyone()  # the group still works after both failures
    seen["after"] = on_rank_zero(acc, lambda: 7)
    with open(f"{out_path}.{rank}", "w") as f:
        json.dump(seen, f)
    acc.wait_for_everyone()
    # Leave together: a rank that exits while its peer's gloo threads still talk to it can abort the peer.
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
