"""`clover2 train` that dies right after its checkpoint at step $CLOVER2_TEST_STOP_AFTER, as a preempted job does.

Run as a script (python or accelerate launch) with `clover2 train`'s arguments. Every process saves
the checkpoint, then exits with 143 (SIGTERM's status) without cleaning up: what is left on disk is
what a preemption leaves.
"""

import os
import sys

from clover2 import cli
from clover2.training import loop as training

STOP_AFTER = int(os.environ["CLOVER2_TEST_STOP_AFTER"])
checkpoint = training._checkpoint


def checkpoint_then_die(accelerator, work, step: int) -> None:
    checkpoint(accelerator, work, step)
    if step == STOP_AFTER:
        accelerator.wait_for_everyone()
        os._exit(143)


training._checkpoint = checkpoint_then_die
sys.exit(cli.main(["train", *sys.argv[1:]]))
