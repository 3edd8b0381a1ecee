"""The reach-ins of ``lightning_modules.compat`` against the installed Lightning and PyTorch: each of these fails
when a release moves the private state it reads or sets."""

import lightning as L
from lightning.pytorch.demos.boring_classes import BoringModel
from torch import nn

from lightning_modules import compat
from lightning_modules.callbacks import EvaluationSchedule


class Steps(L.Callback):
    def __init__(self):
        self.validated, self.fetchers = [], []

    def on_validation_end(self, trainer, pl_module):
        if not trainer.sanity_checking:
            self.validated.append(trainer.global_step)

    def on_train_epoch_start(self, trainer, pl_module):
        self.fetchers.append(trainer.fit_loop._data_fetcher is not None)
        compat.restart_train_iterator(trainer)


def test_validation_follows_the_schedule_and_the_private_state_is_where_compat_reads_it(tmp_path):
    steps = Steps()
    trainer = L.Trainer(accelerator="cpu", max_epochs=2, limit_train_batches=10, limit_val_batches=2, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[EvaluationSchedule(), steps], default_root_dir=tmp_path)
    trainer.fit(BoringModel())
    assert steps.validated == [1, 2, 4, 8, 10, 16, 20]  # powers of two, and every epoch's end
    assert steps.fetchers == [True, True]
    from lightning.fabric.plugins.environments import ClusterEnvironment

    assert isinstance(compat.cluster_environment(trainer), ClusterEnvironment)


def test_lightnings_seed_line_is_logged_where_compat_finds_it():
    import logging

    from lightning.fabric.utilities.seed import seed_everything

    records = []
    handler = logging.Handler()
    handler.emit = records.append
    log = compat.seed_logger()
    level = log.level
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    try:
        seed_everything(7)
    finally:
        log.removeHandler(handler)
        log.setLevel(level)
    assert [record.getMessage() for record in records] == ["Seed set to 7"]


def test_in_place_compile_is_seen():
    layer = nn.Linear(2, 2)
    assert not compat.is_compiled(layer)
    layer.compile()
    assert compat.is_compiled(layer)
