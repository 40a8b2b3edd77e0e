"""Full-scale SDXL chain: official-format release (random weights) -> ``convert official`` -> OpenVINO int8-weights
and ONNX fp16 bundles with an insightface-format pack -> ``verify`` -> one image through each bundle.

No weights can be downloaded here, so the release is written with random weights at the real sizes: SDXL base 1.0
in diffusers layout (``unet/ vae/ text_encoder/ text_encoder_2/ tokenizer/ tokenizer_2/ scheduler/``, the shapes of
``get_backbone_config("xl")``), IP-Adapter's CLIP ViT-H/14 image encoder, and the four DHumanDiff files
(``ip_adapter_ca.pt``, ``face_projection.pt``, ``face_projection2.pt``, ``mapping.pt``) in the official key layout.
The tokenizers are the word-level CLIP-format tokenizer the test fixtures use (``tests/model_fixtures.py``); the
pack is ``tests/face_pack_fixtures.py``'s. The release is written in float32 by default (the default files of
``stabilityai/stable-diffusion-xl-base-1.0`` are float32; ``--release-dtype fp16`` writes the fp16 variant's dtype).

Every step runs as its own subprocess, measured by polling its process tree (``/proc/PID/status``: VmRSS,
RssAnon, RssFile, summed over the tree) and by ``/usr/bin/time -v`` (its "Maximum resident set size" is the
largest single process), with the wall time, the disk size of the step's output and the drop of free disk space
during the step (the scratch files an export writes and removes). A step that would take the machine's last memory
(MemAvailable below ``--guard-mib``) is stopped, so a miss is recorded instead of an OOM kill of someone else.
After each step the figures go to ``benchmarks/results/full_scale_xl.json`` and ``.md`` (a partial run still
leaves them), with the CPU model, its flags and the load averages.

    python benchmarks/full_scale_xl.py [--work /tmp/fullscale] [--steps 2] [--sizes 512] [--only STEP,...]
        [--release-dtype fp32|fp16] [--keep] [--resume]

Steps: release, convert, export-openvino, export-onnx, verify-openvino, verify-onnx, generate-openvino,
generate-onnx. Needs ~24 GB RAM and ~70 GB free disk under --work; everything under --work is deleted at the end
unless --keep. The test ``tests/test_full_scale_xl.py`` (``pytest -m slow``) runs this script.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
PROMPT = "a man and a woman on the beach"
STEPS = ("release", "convert", "export-openvino", "export-onnx", "verify-openvino", "verify-onnx",
         "generate-openvino", "generate-onnx")
GIB = 1024 ** 3


# ---------------------------------------------------------------------------------------------- the release
def _init_(module, dtype) -> None:
    """Materialise a meta-device module on CPU with default-like random weights (finite activations at depth):
    matrices and kernels uniform +-1/sqrt(fan_in), norm scales 1, other vectors small."""
    import torch

    module.to(dtype).to_empty(device="cpu")
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.dim() >= 2:
                bound = 1.0 / max(1, p[0].numel()) ** 0.5
                p.uniform_(-bound, bound, generator=g)
            elif "norm" in name and name.endswith("weight"):
                p.fill_(1.0)
            else:
                p.uniform_(-0.01, 0.01, generator=g)
        for _, b in module.named_buffers():
            b.zero_()


def write_release(root: Path, dtype_name: str = "fp32") -> dict:
    """The official-format release at full SDXL size, one component in memory at a time."""
    import torch
    from diffusers.models.attention_processor import AttnProcessor2_0

    sys.path.insert(0, str(ROOT / "tests"))
    from model_fixtures import OFFICIAL_WORDS, SDXL_SCHEDULER

    from dhumandiff.model.attention import processor_list
    from dhumandiff.model.dhumandiff_model import DHumanDiff
    from dhumandiff.model.official import OFFICIAL_FILES, face_proj_to_official, resampler_to_official

    dtype = {"fp32": torch.float32, "fp16": torch.float16}[dtype_name]
    sdxl, weights = root / "sdxl", root / "weights"
    with torch.device("meta"):
        model = DHumanDiff.from_backbone("xl", words=OFFICIAL_WORDS, seed=1)
    params = {}
    # the four DHumanDiff files (official keys), then each backbone component, freed after saving
    weights.mkdir(parents=True, exist_ok=True)
    procs = processor_list(model.unet)
    _init_(procs, dtype)
    states = {"ip_adapter": dict(procs.state_dict())}
    for name, mod, conv in (("resampler", model.resampler, resampler_to_official),
                            ("face_proj", model.face_proj, face_proj_to_official),
                            ("subject_mlp", model.subject_mlp, dict)):
        _init_(mod, dtype)
        states[name] = conv(mod.state_dict())
    for name, state in states.items():
        params[OFFICIAL_FILES[name]] = sum(v.numel() for v in state.values())
        torch.save({k: v.contiguous() for k, v in state.items()}, weights / OFFICIAL_FILES[name])
    del states
    procs.to("meta")
    model.unet.set_attn_processor(AttnProcessor2_0())
    for name, mod, target in (("unet", model.unet, sdxl / "unet"), ("vae", model.vae, sdxl / "vae"),
                              ("text_encoder", model.text_encoder, sdxl / "text_encoder"),
                              ("text_encoder_2", model.text_encoder_2, sdxl / "text_encoder_2"),
                              ("image_encoder", model.image_encoder, weights / "image_encoder")):
        _init_(mod, dtype)
        params[name] = sum(p.numel() for p in mod.parameters())
        mod.save_pretrained(target, max_shard_size="20GB", safe_serialization=True)  # one file, as the release
        mod.to("meta")
    model.tokenizer.save_pretrained(sdxl / "tokenizer")
    model.tokenizer_2.save_pretrained(sdxl / "tokenizer_2")
    (sdxl / "scheduler").mkdir(exist_ok=True)
    (sdxl / "scheduler" / "scheduler_config.json").write_text(json.dumps(SDXL_SCHEDULER))
    return {"dtype": dtype_name, "parameters": params, "total_parameters": sum(params.values())}


def needed_bundle(step: str, bundles: dict[str, Path], work: Path) -> Path | None:
    """The bundle a verify / generate step reads (None for the other steps)."""
    if not step.startswith(("verify-", "generate-")):
        return None
    rt = step.split("-", 1)[1]
    if rt in bundles:
        return bundles[rt]
    runtime, size = rt.rsplit("-", 1)  # generate-openvino-1024
    return work / f"xl-ov-int8w-{size}" if runtime == "openvino" else None


# ---------------------------------------------------------------------------------------------- generation child
def generate_child(bundle: str, faces: list[str], out: str, steps: int, size: int | None,
                   low_memory: bool = True) -> dict:
    """``dhumandiff generate --bundle [--low-memory]`` as a function (the same ``load_bundle`` + call), with a time
    stamp per step: the first UNet step includes loading/compiling the UNet graph, the later ones are the UNet alone.
    ``low_memory`` (the default here): one graph in memory at a time (SDXL's graphs together do not fit 24 GB);
    for one image each graph loads once either way, but ONNX graphs with external weights then keep them mapped,
    which makes their steps ~2.6x slower (``dhumandiff.contract.onnx_sessions``)."""
    from dhumandiff.runtimes import load_bundle
    from dhumandiff.utils.images import save_image_atomic

    t0 = time.perf_counter()
    gen = load_bundle(bundle, low_memory=low_memory)
    load_s = time.perf_counter() - t0
    stamps: list[float] = []
    res = gen(faces[0], faces[1], PROMPT, steps=steps, seed=0, person_words=("man", "woman"),
              progress=lambda i, n: stamps.append(time.perf_counter()))
    save_image_atomic(res.image, out)
    per_step = [b - a for a, b in zip(stamps, stamps[1:])]
    return {"load_s": load_s, "timings": res.timings, "step_stamps_s": [s - t0 for s in stamps],
            "unet_step_s_after_first": per_step, "image_size": list(res.image.size), "settings": res.settings}


# ---------------------------------------------------------------------------------------------- measuring
def _status(pid: int) -> dict[str, int]:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return {}
    out = {}
    for key in ("VmRSS", "RssAnon", "RssFile"):
        m = re.search(rf"^{key}:\s+(\d+) kB", text, re.M)
        out[key] = int(m.group(1)) * 1024 if m else 0
    return out


def _pss(pid: int) -> dict[str, int]:
    """Proportional set size (``/proc/PID/smaps_rollup``): a page shared by N processes counts 1/N in each, so the
    sum over a process tree is the memory the tree holds. A parent and the child it spawns both map the model's
    safetensors; summing their VmRSS counts those file pages twice."""
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return {}
    out = {}
    for key in ("Pss", "Pss_Anon", "Pss_File"):
        m = re.search(rf"^{key}:\s+(\d+) kB", text, re.M)
        out[key] = int(m.group(1)) * 1024 if m else 0
    return out


def _children(pid: int) -> list[int]:
    """All descendants of ``pid`` (from /proc/PID/task/*/children)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        for task in Path(f"/proc/{p}/task").glob("*") if Path(f"/proc/{p}/task").exists() else []:
            try:
                kids = [int(x) for x in (task / "children").read_text().split()]
            except OSError:
                continue
            out += kids
            todo += kids
    return out


def _mem_available() -> int:
    m = re.search(r"^MemAvailable:\s+(\d+) kB", Path("/proc/meminfo").read_text(), re.M)
    return int(m.group(1)) * 1024 if m else 0


def du(path: Path) -> int:
    """Bytes on disk under ``path`` (allocated blocks)."""
    if not path.exists():
        return 0
    if path.is_file():
        return path.stat().st_blocks * 512
    return sum(p.stat().st_blocks * 512 for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def measure(argv: list[str], log: Path, outputs: list[Path], disk_root: Path, guard: int,
            timeout: float) -> dict:
    """Run ``argv`` under ``/usr/bin/time -v`` and poll its process tree every 0.5 s."""
    timefile = log.with_suffix(".time")
    cmd = (["/usr/bin/time", "-v", "-o", str(timefile)] if Path("/usr/bin/time").exists() else []) + argv
    peak = {"VmRSS": 0, "RssAnon": 0, "RssFile": 0, "Pss": 0, "Pss_Anon": 0, "Pss_File": 0}
    min_avail, max_load, free0 = _mem_available(), os.getloadavg()[0], shutil.disk_usage(disk_root).free
    min_free = free0
    load0 = os.getloadavg()
    t0 = time.perf_counter()
    stopped = None
    with open(log, "w") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
        while proc.poll() is None:
            pids = [proc.pid, *_children(proc.pid)]
            stats = [{**_status(p), **_pss(p)} for p in pids]
            for key in peak:
                peak[key] = max(peak[key], sum(s.get(key, 0) for s in stats))
            avail = _mem_available()
            min_avail = min(min_avail, avail)
            max_load = max(max_load, os.getloadavg()[0])
            min_free = min(min_free, shutil.disk_usage(disk_root).free)
            if avail < guard and stopped is None:
                stopped = f"stopped: MemAvailable {avail / GIB:.2f} GiB < guard {guard / GIB:.2f} GiB"
                os.killpg(proc.pid, signal.SIGKILL)  # the step's own process group (start_new_session)
            if time.perf_counter() - t0 > timeout and stopped is None:
                stopped = f"stopped: over {timeout:.0f} s"
                os.killpg(proc.pid, signal.SIGKILL)
            time.sleep(0.5)
    wall = time.perf_counter() - t0
    rec = {"command": " ".join(argv), "rc": proc.returncode, "wall_s": round(wall, 1),
           "peak_rss_tree_gib": round(peak["VmRSS"] / GIB, 2), "peak_rss_anon_tree_gib": round(peak["RssAnon"] / GIB, 2),
           "peak_rss_file_tree_gib": round(peak["RssFile"] / GIB, 2),
           "peak_pss_tree_gib": round(peak["Pss"] / GIB, 2), "peak_pss_anon_tree_gib": round(peak["Pss_Anon"] / GIB, 2),
           "peak_pss_file_tree_gib": round(peak["Pss_File"] / GIB, 2),
           "min_mem_available_gib": round(min_avail / GIB, 2), "load_avg_start": [round(x, 2) for x in load0],
           "load_avg_max_1min": round(max_load, 2), "load_avg_end": [round(x, 2) for x in os.getloadavg()],
           "output_disk_gib": round(sum(du(p) for p in outputs) / GIB, 2),
           "peak_extra_disk_gib": round((free0 - min_free) / GIB, 2), "stopped": stopped}
    if timefile.is_file():
        text = timefile.read_text()
        m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", text)
        if m:
            rec["time_v_max_rss_gib"] = round(int(m.group(1)) * 1024 / GIB, 2)
        for key, pat in (("user_s", r"User time \(seconds\): ([\d.]+)"), ("sys_s", r"System time \(seconds\): ([\d.]+)")):
            m = re.search(pat, text)
            if m:
                rec[key] = float(m.group(1))
    if proc.returncode != 0:
        rec["log_tail"] = log.read_text(errors="replace")[-3000:]
    return rec


# ---------------------------------------------------------------------------------------------- report
def machine() -> dict:
    info = Path("/proc/cpuinfo").read_text()
    model = re.search(r"^model name\s*:\s*(.+)$", info, re.M)
    flags = set((re.search(r"^flags\s*:\s*(.+)$", info, re.M) or re.match("()", "")).group(1).split())
    wanted = ["avx2", "avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_bf16", "amx_int8", "amx_tile"]
    mem = re.search(r"^MemTotal:\s+(\d+) kB", Path("/proc/meminfo").read_text(), re.M)
    return {"cpu": model.group(1).strip() if model else platform.processor(), "cores": os.cpu_count(),
            "flags": {f: f in flags for f in wanted},
            "mem_total_gib": round(int(mem.group(1)) * 1024 / GIB, 1) if mem else None,
            "python": platform.python_version()}


def write_report(report: dict, results: Path) -> None:
    results.mkdir(parents=True, exist_ok=True)
    (results / "full_scale_xl.json").write_text(json.dumps(report, indent=2))
    m = report["machine"]
    flags = ", ".join(f"{k} {'yes' if v else 'no'}" for k, v in m["flags"].items())
    lines = [f"# Full-scale SDXL chain ({report['started']})", "",
             f"CPU: {m['cpu']}, {m['cores']} cores, {m['mem_total_gib']} GiB RAM; flags: {flags}.",
             f"Release dtype: {report['release_dtype']}; image steps: {report['steps']}; "
             f"generation: {'every graph loaded' if report.get('all_graphs') else 'low_memory (one graph at a time)'}; command: "
             f"`{report['command']}`", "",
             "| step | rc | wall s | peak PSS tree GiB (anon / file) | peak RSS tree sum GiB (anon / file) "
             "| /usr/bin/time max RSS GiB | min MemAvailable GiB "
             "| output disk GiB | extra disk during step GiB | load avg start -> max | note |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in report["steps_run"].items():
        if r.get("rc") is None:  # not run
            lines.append(f"| {name} | - | - | - | - | - | - | - | - | - | {r.get('stopped', '')} |")
            continue
        pss = (f"{r['peak_pss_tree_gib']} ({r['peak_pss_anon_tree_gib']} / {r['peak_pss_file_tree_gib']})"
               if "peak_pss_tree_gib" in r else "-")
        lines.append(f"| {name} | {r['rc']} | {r['wall_s']} | {pss} | {r['peak_rss_tree_gib']} ({r['peak_rss_anon_tree_gib']} / "
                     f"{r['peak_rss_file_tree_gib']}) | {r.get('time_v_max_rss_gib', '-')} | "
                     f"{r['min_mem_available_gib']} | {r['output_disk_gib']} | {r['peak_extra_disk_gib']} | "
                     f"{r['load_avg_start'][0]} -> {r['load_avg_max_1min']} | {'; '.join(x for x in (r.get('stopped'), r.get('note')) if x)} |")
    gens = {k: v for k, v in report["steps_run"].items() if "generation" in v}
    if gens:
        lines += ["", "| image | load s | encode faces s | encode text s | first UNet step s (incl. graph load) | "
                      "UNet step s (later) | decode s | total s |", "|---|---|---|---|---|---|---|---|"]
        for name, r in gens.items():
            g = r["generation"]
            t = g["timings"]
            later = g["unet_step_s_after_first"]
            first = g["step_stamps_s"][0] - g["load_s"] - t["encode_faces"] - t["encode_text"] if g["step_stamps_s"] else 0
            lines.append(f"| {name} {g['image_size'][0]}x{g['image_size'][1]} | {g['load_s']:.1f} | "
                         f"{t['encode_faces']:.1f} | {t['encode_text']:.1f} | {first:.1f} | "
                         f"{', '.join(f'{x:.1f}' for x in later) or '-'} | {t['decode']:.1f} | {t['total']:.1f} |")
    (results / "full_scale_xl.md").write_text("\n".join(lines) + "\n")


def size_variant(model: Path, variant: Path, size: int) -> Path:
    """``model`` at another image size: links to its component folders and a ``dhumandiff.json`` with
    ``image_size`` = ``size`` (exports take their static shapes from it)."""
    variant.mkdir(parents=True, exist_ok=True)
    for entry in model.iterdir():
        link = variant / entry.name
        if entry.name != "dhumandiff.json" and not link.exists():
            link.symlink_to(entry.resolve())
    config = json.loads((model / "dhumandiff.json").read_text())
    config["image_size"] = size
    (variant / "dhumandiff.json").write_text(json.dumps(config, indent=2))
    return variant


# ---------------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=Path, default=Path("/tmp/fullscale"))
    ap.add_argument("--results", type=Path, default=RESULTS)
    ap.add_argument("--steps", type=int, default=2, help="sampling steps of the image (CFG: batch 2)")
    ap.add_argument("--sizes", default="512", help="image sizes, comma-separated: 512 (the official default: every "
                    "step) and e.g. 1024 (adds export-openvino-1024 and generate-openvino-1024: the model at that size "
                    "as an OpenVINO int8-weights bundle, and one image through it)")
    ap.add_argument("--release-dtype", choices=("fp32", "fp16"), default="fp32")
    ap.add_argument("--all-graphs", action="store_true", help="generate with every graph kept loaded (default: "
                    "load_bundle(low_memory=True), one graph at a time)")
    ap.add_argument("--only", default=",".join(STEPS), help="comma-separated steps to run")
    ap.add_argument("--resume", action="store_true", help="keep the figures of steps already in the JSON")
    ap.add_argument("--keep", action="store_true", help="keep --work (default: delete it at the end)")
    ap.add_argument("--keep-release", action="store_true", help="keep the release after conversion")
    ap.add_argument("--guard-mib", type=int, default=700, help="stop a step when MemAvailable drops below this")
    ap.add_argument("--timeout", type=float, default=3 * 3600, help="seconds one step may take")
    ap.add_argument("--child", choices=("release", "generate"), help=argparse.SUPPRESS)
    ap.add_argument("--child-args", default="{}", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child == "release":
        info = write_release(args.work / "release", args.release_dtype)
        (args.work / "release" / "release.json").write_text(json.dumps(info, indent=2))
        return 0
    if args.child == "generate":
        kw = json.loads(args.child_args)
        res = generate_child(**kw)
        Path(kw["out"]).with_suffix(".json").write_text(json.dumps(res, indent=2))
        return 0

    work, results = args.work, args.results
    work.mkdir(parents=True, exist_ok=True)
    rel, model, pack = work / "release", work / "dhumandiff-xl", work / "buffalo_like"
    bundles = {"openvino": work / "xl-ov-int8w", "onnx": work / "xl-onnx-fp16"}
    json_path = results / "full_scale_xl.json"
    report = json.loads(json_path.read_text()) if args.resume and json_path.is_file() else {}
    report.update({"started": report.get("started") or time.strftime("%Y-%m-%d %H:%M"), "machine": machine(),
                   "release_dtype": args.release_dtype, "steps": args.steps, "all_graphs": args.all_graphs,
                   "command": "python benchmarks/full_scale_xl.py " + " ".join(sys.argv[1:] if argv is None else argv)})
    report.setdefault("steps_run", {})
    sizes = [int(x) for x in args.sizes.split(",") if x and int(x) != 512]
    steps = list(STEPS) + [f"{step}-openvino-{size}" for size in sizes for step in ("export", "generate")]
    wanted = [s for s in args.only.split(",") if s] if args.only != ",".join(STEPS) else steps
    unknown = [s for s in wanted if s not in steps]
    if unknown:
        ap.error(f"unknown step(s) {unknown}; choose from {', '.join(steps)}")
    cli = [sys.executable, "-m", "dhumandiff.cli.main"]
    env_note = {}
    # the face pack and the two photos (the tests' real photos: scikit-image's astronaut, the insightface group)
    sys.path.insert(0, str(ROOT / "tests"))
    if not pack.exists():
        from face_pack_fixtures import make_pack

        make_pack(pack)
    faces = [work / "a.png", work / "b.jpg"]
    if not all(f.exists() for f in faces):
        import insightface
        from PIL import Image
        from skimage import data as skdata

        Image.fromarray(skdata.astronaut()).save(faces[0])
        group = Image.open(Path(insightface.__file__).parent / "data" / "images" / "t1.jpg").convert("RGB")
        group.crop((400, 0, 750, 300)).save(faces[1], quality=95)
    plan = {
        "release": ([sys.executable, str(Path(__file__).resolve()), "--child", "release", "--work", str(work),
                     "--release-dtype", args.release_dtype], [rel]),
        "convert": ([*cli, "convert", "official", "--sdxl", str(rel / "sdxl"), "--weights", str(rel / "weights"),
                     "--out", str(model), "--overwrite"], [model]),
        "export-openvino": ([*cli, "export", "openvino", str(model), "--face-models", str(pack), "--quantize",
                             "int8-weights", "--out", str(bundles["openvino"]), "--overwrite"], [bundles["openvino"]]),
        "export-onnx": ([*cli, "export", "onnx", str(model), "--face-models", str(pack), "--precision", "fp16",
                         "--out", str(bundles["onnx"]), "--overwrite"], [bundles["onnx"]]),
    }
    for rt, b in bundles.items():
        plan[f"verify-{rt}"] = ([*cli, "verify", str(b)], [])
        out = work / f"image-{rt}.png"
        kw = {"bundle": str(b), "faces": [str(f) for f in faces], "out": str(out), "steps": args.steps, "size": None,
              "low_memory": not args.all_graphs}
        plan[f"generate-{rt}"] = ([sys.executable, str(Path(__file__).resolve()), "--child", "generate",
                                   "--child-args", json.dumps(kw)], [out])
    for size in sizes:  # the same weights at another size: a model folder of links and its own dhumandiff.json
        variant, bundle = work / f"dhumandiff-xl-{size}", work / f"xl-ov-int8w-{size}"
        plan[f"export-openvino-{size}"] = ([*cli, "export", "openvino", str(variant), "--face-models", str(pack),
                                            "--quantize", "int8-weights", "--out", str(bundle), "--overwrite"],
                                           [bundle])
        out = work / f"image-openvino-{size}.png"
        kw = {"bundle": str(bundle), "faces": [str(f) for f in faces], "out": str(out), "steps": args.steps,
              "size": size, "low_memory": not args.all_graphs}
        plan[f"generate-openvino-{size}"] = ([sys.executable, str(Path(__file__).resolve()), "--child", "generate",
                                              "--child-args", json.dumps(kw)], [out])
    for name in steps:
        if name not in wanted:
            continue
        if name.startswith("export-openvino-") and (model / "dhumandiff.json").is_file():
            size_variant(model, work / f"dhumandiff-xl-{name.rsplit('-', 1)[1]}", int(name.rsplit("-", 1)[1]))
        argv_step, outputs = plan[name]
        needs = needed_bundle(name, bundles, work)
        if needs is not None and not (needs / "bundle.json").is_file():  # its export failed or never ran
            report["steps_run"][name] = {"rc": None, "stopped": f"not run: no bundle at {needs} (its export step "
                                         "did not finish)", "wall_s": None}
            print(f"    {name}: not run (no bundle at {needs})", flush=True)
            write_report(report, results)
            continue
        print(f"[{time.strftime('%H:%M:%S')}] {name}: {' '.join(argv_step)[:200]}", flush=True)
        rec = measure(argv_step, work / f"{name}.log", outputs, work, args.guard_mib * 1024 ** 2, args.timeout)
        if name == "release" and (rel / "release.json").is_file():
            rec["release"] = json.loads((rel / "release.json").read_text())
        if name.startswith("generate-") and outputs[0].with_suffix(".json").is_file():
            rec["generation"] = json.loads(outputs[0].with_suffix(".json").read_text())
            shutil.copy2(outputs[0], results / f"full_scale_xl_{outputs[0].name}")
        if name.startswith("export-"):
            bundle = outputs[0]
            if (bundle / "bundle.json").is_file():
                files = sorted((p for p in bundle.rglob("*") if p.is_file()), key=lambda p: -p.stat().st_size)
                rec["largest_files_gib"] = {str(p.relative_to(bundle)): round(p.stat().st_size / GIB, 3)
                                            for p in files[:8]}
        report["steps_run"][name] = rec
        print(f"    rc {rec['rc']} wall {rec['wall_s']} s peak RSS {rec['peak_rss_tree_gib']} GiB "
              f"(anon {rec['peak_rss_anon_tree_gib']}) disk {rec['output_disk_gib']} GiB {rec.get('stopped') or ''}",
              flush=True)
        write_report(report, results)
        if name == "convert" and rec["rc"] == 0 and not args.keep_release and not args.keep:
            shutil.rmtree(rel, ignore_errors=True)  # frees its disk for the exports; the figures are recorded
    report["env_note"] = env_note
    write_report(report, results)
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    failed = [n for n in wanted if report["steps_run"].get(n, {}).get("rc") != 0]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
