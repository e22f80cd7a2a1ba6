"""The training run: `train(model_config, train_config)` trains (or resumes) a model and fills its model_dir.

`train` runs these steps in order: check the options; pre-flight (records, eigenvalues, label names, the
model_dir) and plan the run's length and the classifier's initial bias (`trainer.run_plan`); write
`config.json` and `train_config.json`; build the model, load initial weights, restore the last
checkpoint (`trainer.training_model`); fit on the `tf.data` input (`trainer.training_data`); evaluate;
export `model.keras`; write `metrics.json`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import tempfile
import time
from collections.abc import Iterator
from typing import Any

from nextvlad.config import ModelConfig
from trainer.config import (
    HISTORY_FILE,
    METRICS_FILE,
    MODEL_CONFIG_FILE,
    MODEL_FILE,
    TRAIN_CONFIG_FILE,
    TrainConfig,
    model_dir_path,
)
from trainer.run_plan import (
    RunPlan,
    check_options,
    check_records,
    classifier_prior,
    load_rgb_scale,
    log_plan,
    plan_run,
    write_configs,
)
from trainer.training_data import label_names_csv, make_datasets
from trainer.training_model import build_training_model, float32_serving_model, load_initial_weights

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class _Fitted:
    """What fitting and exporting left for `metrics.json`."""

    final: dict[str, Any] | None  # the final evaluation, None without eval data
    initial_step: int  # where this run resumed (0 for a fresh run)
    monitor: Any  # the `TrainingMonitor`: global step, training time, steps run
    num_parameters: int


def train(model_config: ModelConfig, train_config: TrainConfig) -> dict[str, Any]:
    """Trains (or resumes training) a model and writes everything into `train_config.model_dir`.

    Args:
        model_config: the model to train (e.g. `ModelConfig.preset("paper")`).
        train_config: data, schedule and outputs.

    Returns:
        What `metrics.json` holds: final evaluation (`gap`, `hit_at_one`, `perr`, `map`, `num_videos`;
        None without eval data), `epochs`, `global_step`, `initial_step` (where this run resumed),
        `train_seconds` and `examples_per_second` of this run, `num_parameters` and the output paths.

    Raises:
        FileNotFoundError: a data pattern, eigenvalue or label-name file does not exist.
        ValueError: records of the wrong kind or with out-of-range labels, a model_dir holding another
            model, or an inconsistent option; raised before any training step.
    """
    import keras

    from nextvlad.serving import has_gpu
    from trainer import checks
    from trainer.callbacks import write_text
    from trainer.checkpoints import CheckpointManager

    start = time.perf_counter()
    cfg, tc = check_options(model_config, train_config), train_config
    backend = keras.backend.backend()
    strategy = _make_strategy(tc.distribution)
    chief = _is_chief(strategy)

    # Pre-flight: everything that can be checked before the model is built.
    train_files, eval_files = check_records(cfg, tc)
    rgb_scale = load_rgb_scale(cfg, tc)
    label_names = label_names_csv(tc.label_names, cfg.num_classes) if tc.label_names else None
    checkpoints = CheckpointManager(
        model_dir_path(tc.model_dir, "checkpoints"), keep=tc.keep_checkpoints, writer=chief
    )
    resuming = checkpoints.exists()
    checks.check_model_dir(tc.model_dir, cfg, config_name=MODEL_CONFIG_FILE, has_checkpoints=resuming)
    plan = plan_run(cfg, tc, train_files, eval_files)
    if resuming:
        checks.check_resumed_recipe(
            tc.model_dir, tc, total_steps=plan.total_steps, config_name=TRAIN_CONFIG_FILE
        )
    prior, prior_records = classifier_prior(plan)
    if chief:
        write_configs(plan, prior_records=prior_records, label_names=label_names)
    log_plan(plan, prior_records)

    policy = ("mixed_float16" if has_gpu() else "mixed_bfloat16") if tc.mixed_precision else "float32"
    with _global_policy(policy):
        keras.utils.set_random_seed(tc.seed)
        fitted = _fit_and_export(
            plan, strategy=strategy, checkpoints=checkpoints, chief=chief, prior=prior, rgb_scale=rgb_scale
        )
    result = _result(plan, fitted, wall_seconds=time.perf_counter() - start, backend=backend, policy=policy)
    if chief:
        write_text(model_dir_path(tc.model_dir, METRICS_FILE), json.dumps(result, indent=2) + "\n")
    return result


def _make_strategy(distribution: str) -> Any:
    """The tf.distribute strategy for `distribution` (None for "none")."""
    if distribution == "none":
        return None
    import keras

    if keras.backend.backend() != "tensorflow":
        raise ValueError(
            f"--distribution {distribution} uses tf.distribute, which needs KERAS_BACKEND=tensorflow "
            f"(the backend is {keras.backend.backend()!r}); set it, or use --distribution none"
        )
    import tensorflow as tf

    if distribution == "mirrored":
        return tf.distribute.MirroredStrategy()
    return tf.distribute.MultiWorkerMirroredStrategy()


def _is_chief(strategy: Any) -> bool:
    """Only the chief of a multi-worker job writes to model_dir."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.cluster_spec().as_dict():
        return True
    task_type, task_id = resolver.task_type, resolver.task_id
    if task_type == "chief":
        return True
    return task_type == "worker" and task_id == 0 and "chief" not in resolver.cluster_spec().as_dict()


@contextlib.contextmanager
def _global_policy(policy: str) -> Iterator[None]:
    """Keras's global dtype policy set to `policy` inside the block, restored after it."""
    import keras

    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(policy)
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(previous)


def _fit_and_export(
    plan: RunPlan, *, strategy: Any, checkpoints: Any, chief: bool, prior: Any, rgb_scale: Any
) -> _Fitted:
    """Builds (or restores) the model, fits it to `plan.total_steps`, evaluates it, and, on the chief,
    exports the float32 serving model (and the segment evaluation of `segment_labels`)."""
    import keras

    from nextvlad.model import count_trainable_parameters, serving_model
    from trainer.callbacks import ScalarSummaries, TrainingMonitor

    cfg, tc, model_dir = plan.model_config, plan.train_config, plan.train_config.model_dir
    with strategy.scope() if strategy is not None else contextlib.nullcontext():
        model = build_training_model(
            cfg, tc, total_steps=plan.total_steps, label_prior=prior, rgb_scale=rgb_scale
        )
        if tc.init_model:
            load_initial_weights(model.network, tc.init_model)
        initial_step = _restore(model, checkpoints)
    serving = serving_model(model.network)
    train_dataset, eval_dataset = make_datasets(
        cfg, tc, plan.train_files, plan.eval_files, initial_step=initial_step, backend=keras.backend.backend()
    )
    monitor = TrainingMonitor(
        checkpoints=checkpoints,
        step=initial_step,
        total_steps=plan.total_steps,
        steps_per_epoch=plan.steps_per_epoch,
        checkpoint_steps=tc.checkpoint_steps,
        serving=serving,
        eval_dataset=eval_dataset,
        history_path=model_dir_path(model_dir, HISTORY_FILE) if chief else None,
    )
    output_dir = model_dir if chief else tempfile.mkdtemp(prefix="nextvlad-worker-")
    callbacks = [monitor, ScalarSummaries(model_dir_path(output_dir, "logs"), monitor)]
    _fit(model, train_dataset, monitor, plan, callbacks=callbacks)

    final = _final_evaluation(monitor, serving, eval_dataset, plan)
    if chief:
        exported = _export(model.network, plan)
        if tc.segment_labels and plan.eval_files:
            final = _segment_evaluation(exported, plan)
    return _Fitted(final, initial_step, monitor, count_trainable_parameters(model.network))


def _restore(model: Any, checkpoints: Any) -> int:
    """Restores the last checkpoint into `model` (weights and optimizer); returns its global step (0 if
    there is none)."""
    import keras

    restored = checkpoints.restore(model)
    if restored is None:
        return 0
    iterations = int(keras.ops.convert_to_numpy(model.optimizer.iterations))
    if restored.iterations is not None and iterations != restored.iterations:
        raise ValueError(
            f"The optimizer state in {restored.path} could not be restored (saved at iteration "
            f"{restored.iterations}, loaded {iterations}); was --mixed_precision changed? "
            "Re-run with the original options, or pick a new --model_dir."
        )
    logger.info("resumed from %s (global step %d)", restored.path, restored.step)
    return restored.step


def _fit(model: Any, dataset: Any, monitor: Any, plan: RunPlan, *, callbacks: list) -> None:
    """Runs `fit` from the monitor's step (the restored one) to `plan.total_steps`; a resumed run first
    finishes its partial epoch."""
    import tensorflow as tf

    from trainer.callbacks import data_error

    initial_step, total_steps, steps_per_epoch = monitor.step, plan.total_steps, plan.steps_per_epoch
    if initial_step >= total_steps:
        logger.info("already trained for %d steps; nothing left to train", initial_step)
        return
    epoch, done = divmod(initial_step, steps_per_epoch)
    segments = []
    if done:
        segments.append((epoch, steps_per_epoch - done, True))
        epoch += 1
    if epoch < plan.num_epochs:
        segments.append((epoch, steps_per_epoch, False))
    try:
        for first_epoch, steps, only_one_epoch in segments:
            if monitor.step >= total_steps:
                break
            monitor.stop_after_epoch = only_one_epoch
            model.fit(
                dataset,
                initial_epoch=first_epoch,
                epochs=plan.num_epochs,
                steps_per_epoch=min(steps, total_steps - monitor.step),
                callbacks=callbacks,
                verbose=1 if plan.train_config.verbose else 0,
                shuffle=False,  # the tf.data pipeline shuffles
            )
    except tf.errors.InvalidArgumentError as e:
        raise data_error(e, "--train_data", plan.model_config.num_classes) from None


def _final_evaluation(monitor: Any, serving: Any, eval_dataset: Any, plan: RunPlan) -> dict[str, Any] | None:
    """The last epoch's evaluation when it was at the final step, else a new one (None without eval data)."""
    import tensorflow as tf

    from trainer.callbacks import data_error, evaluate_predictions, predict_dataset

    final = monitor.last_eval if monitor.last_eval_step == plan.total_steps else None
    if final is not None or eval_dataset is None:
        return final
    try:
        return evaluate_predictions(*predict_dataset(serving, eval_dataset))
    except tf.errors.InvalidArgumentError as e:
        raise data_error(e, "--eval_data", plan.model_config.num_classes) from None


def _export(network: Any, plan: RunPlan) -> Any:
    """Writes `model.keras` (float32) and, if asked, the SavedModel; returns the exported serving model."""
    import tensorflow as tf

    tc, model_dir = plan.train_config, plan.train_config.model_dir
    exported = float32_serving_model(network, plan.model_config)
    tmp = model_dir_path(model_dir, "tmp-model.keras")
    exported.save(tmp)
    tf.io.gfile.rename(tmp, model_dir_path(model_dir, MODEL_FILE), overwrite=True)
    if tc.export_saved_model:
        exported.export(model_dir_path(model_dir, "saved_model"), format="tf_saved_model", verbose=False)
    return exported


def _segment_evaluation(serving: Any, plan: RunPlan) -> dict[str, Any]:
    """Segment mAP@100000 of the exported model on --eval_data (`trainer.segment_evaluation`)."""
    from nextvlad.serving import describe_model
    from trainer.segment_evaluation import evaluate_segments

    tc = plan.train_config
    path = model_dir_path(tc.model_dir, MODEL_FILE)
    evaluation = evaluate_segments(
        serving,
        describe_model(serving, path),
        plan.eval_files,
        batch_size=tc.eval_batch_size,
        progress=tc.verbose,
    )
    return evaluation.metrics


def _result(
    plan: RunPlan, fitted: _Fitted, *, wall_seconds: float, backend: str, policy: str
) -> dict[str, Any]:
    """What `metrics.json` holds (see `train`)."""
    tc, monitor = plan.train_config, fitted.monitor
    examples = monitor.steps_run * tc.batch_size
    return {
        **(fitted.final or dict.fromkeys(("gap", "hit_at_one", "perr", "map", "num_videos"))),
        "epochs": monitor.step / plan.steps_per_epoch,
        "global_step": monitor.step,
        "initial_step": fitted.initial_step,
        "total_steps": plan.total_steps,
        "train_seconds": round(monitor.train_seconds, 3),
        "examples_per_second": round(examples / monitor.train_seconds, 2) if monitor.train_seconds else None,
        "wall_seconds": round(wall_seconds, 3),
        "num_parameters": fitted.num_parameters,
        "batch_size": tc.batch_size,
        "backend": backend,
        "mixed_precision": policy,
        "model": model_dir_path(tc.model_dir, MODEL_FILE),
        "eval_data": list(tc.eval_data),
    }
