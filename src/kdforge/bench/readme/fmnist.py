"""Fashion-MNIST sections: methods, label-scarce, overhead, demo time, DDP, strategies."""

from __future__ import annotations

from kdforge.bench.readme.markdown import accuracy_rows, pm, table


def methods_section(data: dict) -> list[str]:
    """One table per student setting: every method, last/best/at-best-val test accuracy."""
    lines = ["### Fashion-MNIST: objectives compared (`benchmarks/fmnist_methods.py`)", ""]
    seeds = len(data.get("seeds", []))
    lines.append(
        f"Teacher: `cnn` (390k params, 2 epochs, trained on the full training split). {seeds} seeds per row; test "
        "accuracy in % (mean ± std) at the last epoch, at the best epoch (the literature's convention) and at the "
        "epoch that was best on the validation split. KD's (T, α) was chosen on the validation split (seed 0)."
    )
    for key, entry in data["students"].items():
        setting = entry.get("setting", {})
        chosen = entry["selection"]["chosen"]
        student = setting.get("student", {})
        limit = setting.get("data", {}).get("train_limit")
        images = f"{limit} training images" if limit else "all 54,000 training images"
        lines += [
            "",
            f"**{key}** — student `{student.get('name')}` {student.get('params', {})}, {images}, "
            f"{entry['epochs']} epochs; KD chosen T={chosen['T']}, α={chosen['alpha']}. "
            f"KD − scratch (last epoch): {100 * entry['kd_gain_last']:+.2f} points; beyond the seed spread: "
            f"{'yes' if entry['kd_beats_scratch_beyond_spread'] else 'no'}.",
            "",
        ]
        keys = ("test_last", "test_best", "test_at_best_val")
        lines += table(["method", "last epoch", "best epoch", "at best val"], accuracy_rows(entry["methods"], keys))
    return lines


def label_scarce_section(data: dict) -> list[str]:
    """CE on 1% labels vs KD on all images without labels."""
    rows = accuracy_rows(data["settings"], ("test_last", "test_best"))
    return [
        "",
        "### Label-scarce (`benchmarks/label_scarce.py`)",
        "",
        *table(["setting", "last epoch", "best epoch"], rows),
    ]


def overhead_section(data: dict) -> list[str]:
    """Median step times and the ratios, one line per student."""
    lines = ["", "### Step-time overhead (`benchmarks/overhead.py`)", ""]
    for key, d in data["students"].items():
        m = d["median_ms"]
        lines.append(
            f"- **{key}** ({d['student']}; batch {d['batch']}, {d['steps']} interleaved steps, "
            f"teacher {d['teacher']}): "
            f"CE step {m['ce_step']:.2f} ms, teacher forward {m['teacher_forward']:.2f} ms, online-KD step "
            f"{m['kd_step']:.2f} ms → KD / (CE + teacher) = **{d['kd_over_ce_plus_teacher']:.3f}** (limit 1.15). "
            f"KD from a store on disk: {m['store_step']:.2f} ms = **{d['cached_step_ratio']:.3f}×** the CE step "
            f"(`cached_step_ratio`; `live_step_ratio` {d['live_step_ratio']:.2f}×); from in-memory precomputed "
            f"logits {d['precomputed_step_ratio']:.3f}×. Plain PyTorch, no kdforge, same KD step / CE step: "
            f"{d.get('plain_pytorch_kd_over_ce', float('nan')):.3f}× (the floor set by the KD term itself)."
        )
    rec = data.get("recording")
    if rec:
        m = rec["median_ms"]
        lines.append(
            f"- **Recording** (`--recording`; {rec['student']} ← {rec['teacher']}, batch {rec['batch']}, "
            f"{rec['steps']} interleaved steps): a KD step with {rec['recorded_layers_per_side']} layers recorded on "
            f"each side (loss arithmetic excluded) {m['recorded']:.2f} ms vs {m['plain']:.2f} ms without → "
            f"**{rec['recorded_over_plain']:.3f}×** (limit {rec['limit']:.2f})."
        )
    return lines


def demo_section(data: dict) -> list[str]:
    """How long `make demo`'s run takes and what it prints."""
    rows = {r["name"]: r for r in data["rows"]}
    return [
        "",
        "### The default run (`benchmarks/demo_time.py`)",
        "",
        f"`kdforge run`: {data['empty_teacher_cache_s']:.0f} s with an empty teacher cache (teacher trained), "
        f"{data['cached_teacher_s']:.0f} s with the cached teacher (limit {data['limit_s']} s). Test accuracy: teacher "
        f"{100 * rows['teacher']['accuracy']:.2f}%, scratch {100 * rows['scratch']['accuracy']:.2f}%, "
        f"KD {100 * rows['kd']['accuracy']:.2f}%.",
        "",
    ]


def ddp_section(data: dict) -> list[str]:
    """1 vs 2 processes."""
    one, two = data["one_process"], data["two_processes"]
    return [
        "",
        "### One process vs two (`benchmarks/ddp_compare.py`)",
        "",
        f"{data['recipe']} on the full training split (2 epochs), `torchrun --nproc_per_node 2` "
        f"(gloo, world size asserted = {two['world_size']}): test "
        f"accuracy {100 * one['test']['accuracy']:.2f}% on 1 process vs {100 * two['test']['accuracy']:.2f}% on 2 "
        f"(gap {data['accuracy_gap_points']:.2f} points); training wall time {one['train_wall_s']:.1f} s vs "
        f"{two['train_wall_s']:.1f} s on a 2-core machine.",
    ]


def _gain(a: dict, b: dict) -> str:
    """a − b in points of accuracy, with the larger of the two stds for scale."""
    return f"{100 * (a['mean'] - b['mean']):+.2f} points (std ≤ {100 * max(a['std'], b['std']):.2f})"


def _strategy_differences(parts: dict) -> list[str]:
    """The differences each must-show claim is about, computed from the means (what held and what did not)."""
    out = []
    if "mutual" in parts:
        p = parts["mutual"]
        out.append(
            f"mutual − alone: s0 {_gain(p['mutual_s0'], p['alone_s0'])}, s1 {_gain(p['mutual_s1'], p['alone_s1'])}"
        )
    if "born_again" in parts:
        p = parts["born_again"]
        verdict = "" if p["gen-2"]["mean"] >= p["gen-1"]["mean"] >= p["gen-0"]["mean"] else " (no born-again gain here)"
        out.append(
            f"born_again generation 2 − generation 1: {_gain(p['gen-2'], p['gen-1'])}; generation 1 − generation 0: "
            f"{_gain(p['gen-1'], p['gen-0'])}{verdict}"
        )
    if "assistant" in parts:
        p = parts["assistant"]
        out.append(f"assistant chain − direct KD: {_gain(p['via_assistant'], p['direct_kd'])}")
    if "ensemble" in parts:
        p = parts["ensemble"]
        t = p["teacher_test_accuracy"]
        out.append(
            f"multi_teacher: the ensemble is {100 * (t['ensemble_mean'] - max(t['members'])):+.2f} points above its "
            f"best member as a classifier; its student {_gain(p['student_of_ensemble'], p['student_of_best_single'])} "
            "against the best member's student"
        )
    if "ensemble_cnn" in parts:
        p = parts["ensemble_cnn"]
        out.append(
            f"multi_teacher with a CNN student: {_gain(p['student_of_ensemble'], p['student_of_best_single'])} "
            "for the ensemble's student"
        )
    for key, label in (("labels_0.01", "1%"), ("labels_0.1", "10%")):
        if "mean_teacher" in parts and key in parts["mean_teacher"]:
            p = parts["mean_teacher"][key]
            out.append(f"mean_teacher − supervised, Fashion-MNIST {label}: {_gain(p['mean_teacher'], p['supervised'])}")
    if "r8" in parts:
        p = parts["r8"]
        out.append(f"mean_teacher − supervised, R8 5%: {_gain(p['mean_teacher'], p['supervised'])}")
    return out


def strategies_section(data: dict) -> list[str]:
    """Teaching strategies, 3 seeds each: each strategy next to the baseline it must beat, and step-time ratios."""
    parts = data["parts"]
    lines = ["### Teaching strategies (`benchmarks/strategies.py`)", ""]
    lines.append(
        "Test accuracy, mean ± std over seeds 0-2 (each row pairs runs of the same seed). Each strategy runs from its "
        "built-in recipe (`kdforge recipes`) with the setting quoted."
    )
    lines.append("")
    rows = []
    if "mutual" in parts:
        p = parts["mutual"]
        rows += [
            [
                "mutual",
                "student s0 (mutual / alone, same initial weights)",
                f"{pm(p['mutual_s0'])} / {pm(p['alone_s0'])}",
            ],
            ["mutual", "student s1 (mutual / alone)", f"{pm(p['mutual_s1'])} / {pm(p['alone_s1'])}"],
        ]
    if "born_again" in parts:
        p = parts["born_again"]
        gens = " → ".join(pm(p[k]) for k in ("gen-0", "gen-1", "gen-2"))
        rows.append(["born_again", "generation 0 → 1 → 2 (CE + KD)", gens])
        rows.append(["born_again", "ensemble of generations 0-2", pm(p["ensemble_of_generations"])])
        if "cwtm" in p:
            rows.append(
                ["born_again", "CWTM: generation 0 → 1", f"{pm(p['cwtm']['gen-0'])} → {pm(p['cwtm']['gen-1'])}"]
            )
    if "assistant" in parts:
        p = parts["assistant"]
        rows.append(
            [
                "assistant",
                "mlp[8] student: via the mlp[256] assistant / direct KD",
                f"{pm(p['via_assistant'])} / {pm(p['direct_kd'])}",
            ]
        )
        rows.append(["assistant", "the assistant itself", pm(p["assistant"])])
    if "ensemble" in parts:
        p = parts["ensemble"]
        t = p["teacher_test_accuracy"]
        members = ", ".join(f"{100 * a:.2f}" for a in t["members"])
        rows.append(
            [
                "multi_teacher",
                "student of the 3-CNN mean / of the best single CNN",
                f"{pm(p['student_of_ensemble'])} / {pm(p['student_of_best_single'])}",
            ]
        )
        rows.append(["multi_teacher", "teachers: members / their mean", f"{members} / {100 * t['ensemble_mean']:.2f}"])
    if "ensemble_cnn" in parts:
        p = parts["ensemble_cnn"]
        rows.append(
            [
                "multi_teacher",
                "cnn[16,32,64] student of the 3-CNN mean / of the best single CNN",
                f"{pm(p['student_of_ensemble'])} / {pm(p['student_of_best_single'])}",
            ]
        )
    for key, label in (("labels_0.01", "1%"), ("labels_0.1", "10%")):
        if "mean_teacher" in parts and key in parts["mean_teacher"]:
            p = parts["mean_teacher"][key]
            rows.append(
                [
                    "mean_teacher",
                    f"Fashion-MNIST, {label} labels: student (EMA) / supervised on the same labels",
                    f"{pm(p['mean_teacher'])} ({pm(p['mean_teacher_ema'])}) / {pm(p['supervised'])}",
                ]
            )
    if "r8" in parts:
        p = parts["r8"]
        rows.append(
            [
                "mean_teacher",
                "Reuters R8 files, 5% labels: student (EMA) / supervised",
                f"{pm(p['mean_teacher'])} ({pm(p['mean_teacher_ema'])}) / {pm(p['supervised'])}",
            ]
        )
    lines += table(["strategy", "comparison", "test accuracy %"], rows)
    lines.append("")
    lines += [f"- {line}" for line in _strategy_differences(parts)]
    for name in ("mutual", "born_again", "assistant", "ensemble", "ensemble_cnn", "mean_teacher", "r8"):
        if name in parts:
            lines.append(f"- {name}: {parts[name]['setting']}.")
    if "step_time" in parts:
        p = parts["step_time"]
        lines += ["", f"Step time, {p['setting']}:", ""]
        lines += table(["ratio", "value"], [[k, f"{v:.2f}×"] for k, v in p["ratios"].items()])
        share = 100 * p["ema_update_share_of_mean_teacher_step"]
        lines += ["", f"The EMA update takes {1000 * p['ema_update_s']:.2f} ms, {share:.1f}% of a mean-teacher step."]
    return [*lines, ""]
