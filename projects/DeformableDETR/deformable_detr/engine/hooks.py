"""Training hooks that treat a resumed training as the continuation of the
interrupted one."""

import os
import re

from detectron2.engine import hooks

__all__ = ["ResumablePeriodicCheckpointer"]


class ResumablePeriodicCheckpointer(hooks.PeriodicCheckpointer):
    """detectron2's PeriodicCheckpointer hook, which, on a resumed training,

    - counts the periodic checkpoints the interrupted training wrote towards
      ``max_to_keep`` (detectron2 only counts its own, so they were never removed);
    - writes ``<prefix>_final.pth`` when nothing is left to train (the checkpoint
      resumed from is at the last iteration, the final one was not written yet).
    """

    def before_train(self):
        super().before_train()
        start_iter = self.trainer.start_iter
        pattern = re.compile(rf"{re.escape(self.file_prefix)}_(\d{{7}})\.pth")
        directory = self.checkpointer.save_dir
        earlier = sorted(
            (int(match.group(1)), os.path.join(directory, name))
            for name in (os.listdir(directory) if os.path.isdir(directory) else [])
            if (match := pattern.fullmatch(name)) and int(match.group(1)) < start_iter
        )
        self.recent_checkpoints = [path for _, path in earlier]
        final = os.path.join(directory, f"{self.file_prefix}_final.pth")
        if start_iter >= self.max_iter > 0 and self.checkpointer.get_checkpoint_file() != final:
            self.checkpointer.save(f"{self.file_prefix}_final", iteration=start_iter - 1)
