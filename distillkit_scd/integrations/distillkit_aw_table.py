"""`distillkit-scd aw-table CONFIG`: compute and save the static AW table of a DistillKit config.

A command above both `distillkit.py` (which checks a config's table at load) and `distillkit_aw.py` (the
table's sample keys and collator), so neither imports the other back.
"""

from __future__ import annotations

import logging
from pathlib import Path

from distillkit_scd.config import RecipeError
from distillkit_scd.integrations.distillkit_aw import expected_checkpoints, sample_key

logger = logging.getLogger(__name__)


def build_table(config_path: str | Path, batch_size: int = 8) -> Path:
    """`distillkit-scd aw-table CONFIG`: compute and save the static AW table of a DistillKit config.

    Returns the table's JSON path (`distillkit_scd.aw.table`, else OUTPUT_PATH/aw/aw_table.json).
    """
    import transformers

    from distillkit_scd.data.collate import DistillationCollator
    from distillkit_scd.integrations.distillkit import aw_table_path, load_config
    from distillkit_scd.integrations.distillkit_checks import check_checkpoint_shapes, validate_manifest
    from distillkit_scd.integrations.distillkit_data import load_rows
    from distillkit_scd.teachers.aw_table import compute_aw_table
    from distillkit_scd.teachers.pool import CheckpointPool
    from distillkit_scd.utils import hashing

    run_config, settings, _ = load_config(config_path, check_files=False)  # the table is what we write
    if run_config.teacher.kind != "hf":
        raise RecipeError(f"{config_path}: teacher.kind: expected hf (an online teacher) for the AW table, "
                          f"got {run_config.teacher.kind!r}")
    pool = None
    if settings.schedule.method != "none":
        where = f"{config_path}: distillkit_scd.schedule.manifest"
        validate_manifest(settings.schedule.manifest, where)
        try:
            pool = CheckpointPool(settings.schedule.manifest)
        except ValueError as err:
            raise RecipeError(f"{where}: {err}") from None
        check_checkpoint_shapes(pool, run_config.teacher.path, where)
    tokenizer, rows, _ = load_rows(run_config, settings.labels)
    keys, seen = [], set()
    keep = []
    for i, ids in enumerate(rows["input_ids"]):
        key = sample_key(ids)
        if key not in seen:
            seen.add(key)
            keys.append(key)
            keep.append(i)
    table_rows = rows.select(keep).add_column("id", keys)
    logger.info("AW table: %d samples (%d duplicates merged), %d checkpoint(s)", len(keep), len(rows) - len(keep),
                pool.num_checkpoints if pool else 1)
    load = transformers.AutoModelForCausalLM.from_pretrained
    student = load(run_config.train_model, **run_config.model_kwargs)
    teacher = load(run_config.teacher.path, **(run_config.teacher.kwargs or {}))
    collator = DistillationCollator(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0)
    if pool is not None:
        from distillkit_scd.integrations.distillkit_checks import check_module_shapes

        check_module_shapes(teacher, pool)
        table = compute_aw_table(student, pool, table_rows, batch_size, teacher=teacher, collator=collator)
    else:
        table = compute_aw_table(student, [teacher], table_rows, batch_size, collator=collator)
    checkpoints = expected_checkpoints(run_config, pool)
    local = [p for p in [run_config.train_model, *checkpoints] if Path(p).is_dir()]
    table.key = hashing.combine(*[hashing.folder_hash(p) for p in local], hashing.dataset_hash(table_rows))
    table.metadata = {"source": "distillkit", "config": str(config_path), "student": run_config.train_model,
                      "checkpoints": checkpoints, "labels": settings.labels,
                      "max_length": run_config.training_args.get("max_length", run_config.sequence_length)}
    logger.info("AW table: mean AW per checkpoint %s", [round(x, 3) for x in table.weights.mean(0).tolist()])
    return table.save(aw_table_path(run_config, settings))
