"""The outputs of ``ns-3dae-bench compare``: ``compare.json``, ``compare.md`` (a markdown table) and two PNG plots."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List, Optional

TARGETS = {"time_ratio": 10.0, "memory_ratio": 3.2, "render_ratio": 5.0}
"""The goals the comparison reports against (issue: ≥ 10× time, ≥ 3.2× memory, ≥ 5× rendering)."""

PLOTS = ("psnr_vs_time.png", "effective_cost.png", "effective_memory.png")


def _num(value: Optional[float], fmt: str = "{:.2f}", missing: str = "not reached") -> str:
    return missing if value is None else fmt.format(value)


def _met(name: str, value: Optional[float]) -> str:
    if value is None:
        return "no"
    return "yes" if value >= TARGETS[name] else "no"


def _margin_db(result: Dict) -> float:
    """The ``--target-margin-db`` a result was made with: its RGB final PSNR minus its PSNR target."""
    return round(result["psnr_rgb"] - result["psnr_target"], 3)


def plateau_cell(verdict: Dict) -> str:
    """The plateau rule's verdict on one curve, for a table cell: says loudly when it had NOT plateaued."""
    if verdict["plateaued"]:
        return f"yes ({verdict['verdict']})"
    return f"**NOT plateaued**: {verdict['verdict']}"


def convergence_table(result: Dict) -> List[str]:
    """The figures at convergence (compare.json's ``convergence``) as markdown lines."""
    c, n = result["convergence"], result["settings"]["scenes"]
    rgb, latent = c["rgb"], c["latent"]
    gain, margin = c["rule"]["min_gain_db"], round(rgb["psnr"] - c["psnr_target"], 3)

    def reached(m: Dict) -> str:
        return f"step {m['step']}, {m['seconds']:.1f} s ({m['seconds'] / n:.1f} s per scene)"

    def trained(m: Dict) -> str:
        return f"{m['last_step']} (cap {m['step_cap']}{', hit' if m['cap_hit'] else ''})"

    ratio = c["time_ratio"]
    measured = _num(ratio) if ratio is not None else f"not reached: {c['time_ratio_reason']}"
    lines = [
        "**At convergence**: each method trained its equal-budget steps, then on until the plateau rule or its step "
        f"cap stopped it. The rule: {c['rule']['statement']}.",
        "",
        "| | 3dae-rgb | 3dae-latent |",
        "|---|---|---|",
        f"| plateaued? | {plateau_cell(rgb)} | {plateau_cell(latent)} |",
        f"| plateau test PSNR (the best) | {rgb['psnr']:.2f} dB | {latent['psnr']:.2f} dB |",
        f"| first within {gain:g} dB of it | {reached(rgb)} | {reached(latent)} |",
        f"| steps trained | {trained(rgb)} | {trained(latent)} |",
        "",
        "| ratio (RGB ÷ latent) | measured | goal | met |",
        "|---|---|---|---|",
        f"| time to {c['psnr_target']:.2f} dB (RGB plateau − {margin:g} dB) | {measured} | "
        f"≥ {TARGETS['time_ratio']:g} | {_met('time_ratio', ratio)} |",
    ]
    lines += [""] + [f"* caveat: {text}" for text in c["caveats"]] if c["caveats"] else []
    budget = result["settings"]
    return lines + [
        "",
        f"**Equal budget** (3dae-rgb {budget['rgb_steps']} steps, 3dae-latent {budget['latent_steps']}: the same "
        "runs cut there):",
        "",
    ]


def markdown_table(result: Dict) -> str:
    """The figures as markdown: at convergence first when the run was in convergence mode; then the equal-budget
    ratios against their targets and both methods side by side."""
    kib = lambda b: f"{b / 1024:,.1f} KiB"  # noqa: E731
    t, b, a, r = (
        result["time_per_scene_s"],
        result["bytes_per_scene"],
        result["activation_bytes_per_scene"],
        result["render_time_s"],
    )
    head: List[str] = convergence_table(result) if result.get("convergence") else []
    lines: List[str] = [
        f"**ns-3dae-bench compare**, preset `{result['preset']}` on {result['device']} "
        f"({result['settings']['scenes']} scenes, {result['settings']['image_size']}² images, "
        f"R = {result['settings']['triplane_resolution']}); PSNR target {result['psnr_target']:.2f} dB "
        f"(RGB final − {_margin_db(result):g} dB); baseline: RGB Tri-Planes (32 scene-specific channels per plane, "
        f"no bases); times in {result.get('clock_reads', 'wall seconds')}",
        "",
        "| ratio (RGB ÷ latent) | measured | goal | met |",
        "|---|---|---|---|",
        f"| time per scene to the PSNR target | {_num(result['time_ratio'])} | ≥ {TARGETS['time_ratio']:g} | "
        f"{_met('time_ratio', result['time_ratio'])} |",
        f"| time per scene to {result['common_psnr']:.2f} dB (the lower best PSNR of the two) | "
        f"{_num(result['time_ratio_at_common_psnr'])} | – | – |",
        f"| memory per scene (parameters + optimiser state) | {result['memory_ratio']:.2f} | "
        f"≥ {TARGETS['memory_ratio']:g} | {_met('memory_ratio', result['memory_ratio'])} |",
        f"| effective memory per scene at N = 1000 (parameters + shared / N, the paper's accounting) | "
        f"{_num(result.get('effective_memory_ratio'), missing='–')} | – | – |",
        f"| the same with Adam state | {_num(result.get('effective_memory_ratio_with_adam'), missing='–')} | – | – |",
        f"| training activations per scene of a batch | {result['activation_memory_ratio']:.2f} | – | – |",
        f"| render one {r['size']}² view | {result['render_ratio']:.2f} | ≥ {TARGETS['render_ratio']:g} | "
        f"{_met('render_ratio', result['render_ratio'])} |",
        "",
        "| | 3dae-rgb | 3dae-latent |",
        "|---|---|---|",
        f"| final test PSNR (dB) | {result['psnr_rgb']:.2f} | {result['psnr_latent']:.2f} "
        f"(best {result['best_psnr_latent']:.2f}) |",
        f"| final test SSIM | {result['ssim_rgb']:.3f} | {result['ssim_latent']:.3f} |",
        f"| plateaued by the last step? | {plateau_cell(result['plateau']['rgb'])} | "
        f"{plateau_cell(result['plateau']['latent'])} |",
        f"| test PSNR of the autoencoder alone, D(E(x)) (the latent ceiling) | – | "
        f"{_num(result.get('autoencoded_psnr'), '{:.2f}', 'not measured')} |",
        f"| time per scene to {result['psnr_target']:.2f} dB | {_num(t['rgb'], '{:.1f} s')} | "
        f"{_num(t['latent'], '{:.1f} s')} |",
        f"| whole schedule per scene | {result['full_schedule_time_per_scene_s']['rgb']:.1f} s | "
        f"{result['full_schedule_time_per_scene_s']['latent']:.1f} s |",
        f"| parameters + optimiser state per scene | {kib(b['rgb'])} | {kib(b['latent'])} |",
        f"| activations per scene of a batch | {kib(a['rgb'])} | {kib(a['latent'])} |",
        f"| render one {r['size']}² view | {1e3 * r['rgb']:.1f} ms | {1e3 * r['latent']:.1f} ms |",
        f"| stage 1 (3dae-autoencoder, shared) | – | {result['stage1_time_s']:.1f} s |",
        "",
        "Effective latent time per scene with stage 1 shared by N scenes (to the target; whole schedule):",
        "",
        "| N | 3dae-rgb | 3dae-latent + stage 1 / N (to target) | (whole schedule) |",
        "|---|---|---|---|",
    ]
    for n, row in result["effective_time_per_scene_s"].items():
        lines.append(
            f"| {n} | {_num(row['rgb'], '{:.1f} s')} | {_num(row['latent'], '{:.1f} s')} | "
            f"{row['latent_full_schedule']:.1f} s |"
        )
    memory = result.get("effective_memory")
    if memory is not None:
        lines += ["", "Effective parameters per scene (own + shared / N; with Adam state in brackets):", "",
                  "| N | 3dae-rgb | 3dae-latent | ratio |", "|---|---|---|---|"]  # fmt: skip
        p, a = memory["params"], memory["with_adam"]
        for i, n in enumerate(memory["counts"]):
            lines.append(
                f"| {n} | {p['rgb'][i]:,.0f} ({a['rgb'][i]:,.0f}) | {p['latent'][i]:,.0f} "
                f"({a['latent'][i]:,.0f}) | {p['ratio'][i]:.2f} ({a['ratio'][i]:.2f}) |"
            )
    ablation = result.get("ablation")
    if ablation is not None:
        lines += ["", f"Ablation, {ablation['method']}:", "",
                  f"| final test PSNR | {ablation['psnr']:.2f} dB |", "|---|---|",
                  f"| final test SSIM | {ablation['ssim']:.3f} |",
                  f"| parameters + optimiser state per scene | {kib(ablation['bytes_per_scene'])} "
                  f"(×{ablation['memory_ratio']:.2f} the latent method's) |",
                  f"| time per scene to {result['psnr_target']:.2f} dB | "
                  f"{_num(ablation['time_per_scene_s'], '{:.1f} s')} |",
                  f"| render one {r['size']}² view | ×{ablation['render_ratio']:.2f} "
                  "the latent method's time |"]  # fmt: skip
    lines += ["", "Where the time goes (seconds on the clock):", "", "| method | part | seconds |", "|---|---|---|"]
    for method, parts in result["profile_s"].items():
        lines += [f"| {method} | {part} | {seconds:.1f} |" for part, seconds in parts.items()]
    return "\n".join(head + lines) + "\n"


def plot(result: Dict, folder: Path) -> List[Path]:
    """PSNR against training time for both methods, the effective per-scene cost and the effective per-scene memory
    against N (PNG files)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = [folder / name for name in PLOTS]
    fig, ax = plt.subplots(figsize=(6, 4), dpi=110)
    converged = result.get("convergence")
    for method, colour in (("rgb", "tab:blue"), ("latent", "tab:orange")):
        curve = (converged or result)["curves"][method]
        ax.plot([c[1] for c in curve], [c[2] for c in curve], "o-", color=colour, ms=3, label=f"3dae-{method}")
        if converged:
            m = converged[method]
            state = "plateau" if m["plateaued"] else "best, NOT plateaued"
            ax.plot([m["seconds"]], [m["psnr"]], "*", color=colour, ms=12, label=f"3dae-{method} {state}")
    if converged:
        ax.axhline(converged["psnr_target"], color="black", ls=":", lw=1, label="RGB plateau − margin")
    if result.get("ablation"):
        curve = result["ablation"]["curve"]
        ax.plot(
            [c[1] for c in curve],
            [c[2] for c in curve],
            "^--",
            color="tab:green",
            ms=3,
            label="3dae-rgb, micro/macro bank (ablation)",
        )
    ax.axhline(
        result["psnr_target"], color="grey", ls="--", lw=1, label=f"target (RGB final − {_margin_db(result):g} dB)"
    )
    ax.set_xlabel(f"training time, {result.get('clock_reads', 'wall seconds')} (all scenes)")
    ax.set_ylabel("test PSNR (dB, RGB)")
    ax.set_title(f"PSNR vs time, {result['settings']['scenes']} scenes ({result['device']})")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(paths[0])
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 4), dpi=110)
    rows = result["effective_time_per_scene_s"]
    counts = [int(n) for n in rows]
    rgb = [rows[str(n)]["rgb"] for n in counts]
    if all(v is not None for v in rgb):
        ax.plot(counts, rgb, "o-", color="tab:blue", label="3dae-rgb (to target)")
    latent = [rows[str(n)]["latent"] for n in counts]
    if all(v is not None for v in latent):
        ax.plot(counts, latent, "o-", color="tab:orange", label="3dae-latent + stage 1 / N (to target)")
    ax.plot(
        counts,
        [rows[str(n)]["latent_full_schedule"] for n in counts],
        "s--",
        color="tab:orange",
        alpha=0.6,
        label="3dae-latent + stage 1 / N (whole schedule)",
    )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("N scenes sharing stage 1")
    ax.set_ylabel("effective time per scene (s)")
    ax.set_title("Effective per-scene cost")
    ax.legend()
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    fig.savefig(paths[1])
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 4), dpi=110)
    memory = result.get("effective_memory")
    if memory is not None:
        for key, style in (("params", "-"), ("with_adam", "--")):
            label = "parameters" if key == "params" else "with Adam state"
            ax.plot(memory["counts"], memory[key]["rgb"], style, color="tab:blue", label=f"3dae-rgb, {label}")
            ax.plot(memory["counts"], memory[key]["latent"], style, color="tab:orange", label=f"3dae-latent, {label}")
        ax.axvline(memory["reference_n"], color="grey", lw=1, ls=":")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_title(f"Effective memory per scene (×{memory['ratio']:.2f} at N = {memory['reference_n']})")
        ax.legend(fontsize=8)
    ax.set_xlabel("N scenes sharing the bases, MLP and autoencoder")
    ax.set_ylabel("floats per scene (own + shared / N)")
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    fig.savefig(paths[2])
    plt.close(fig)
    return paths


def write_outputs(result: Dict, folder: Path) -> List[Path]:
    """compare.json, compare.md and the plots in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "compare.json").write_text(json.dumps(result, indent=2) + "\n")
    (folder / "compare.md").write_text(markdown_table(result))
    return [folder / "compare.json", folder / "compare.md", *plot(result, folder)]
