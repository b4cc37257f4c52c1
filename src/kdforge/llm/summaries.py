"""The lines ``kdforge annotate / generate / teach`` print when a job ends."""

from __future__ import annotations

from typing import Any


def usage_line(usage: dict[str, Any]) -> str:
    """Requests sent, answered from the cache, failed, retried; tokens and cost."""
    tokens = usage["prompt_tokens"] + usage["completion_tokens"]
    return (
        f"requests: {usage['requests']} sent · {usage['cached']} cached · {usage['failed']} failed · "
        f"{usage['retries']} retries · tokens {tokens} · cost {usage['cost']:.4f}"
    )


def annotate_lines(summary: dict[str, Any]) -> list[str]:
    """Counts, usage, throughput, agreement (when gold labels exist) and where the files are."""
    c = summary["counts"]
    lines = [
        f"annotated {summary['rows']} texts with {summary['teacher']} ({summary['method']}): {c['ok']} labeled · "
        f"{c['unknown']} unknown · {c['failed']} failed · {c['empty']} empty",
        usage_line(summary["usage"]),
        f"time: {summary['seconds']:.1f} s ({summary['texts_per_second']} texts/s)",
    ]
    agreement = summary.get("agreement")
    if agreement and agreement.get("n"):
        from kdforge.llm.agreement import format_report

        lines.append(format_report(agreement, summary["labels"]))
    lines.append(f"written: {summary['files']['annotations']}")
    return lines


def generate_lines(summary: dict[str, Any]) -> list[str]:
    """What was generated, kept and dropped (and why), usage, and where the data set is."""
    if "rationales" in summary:
        head = (
            f"rationales: {summary['kept']} of {summary['rationales']} kept (final answer = gold) for "
            f"{summary['examples_with_a_kept_rationale']} of {summary['examples']} examples"
        )
        where = summary["files"]["rationales"]
    else:
        dropped = ", ".join(f"{k}: {v}" for k, v in summary["dropped"].items()) or "none"
        head = f"generated {summary['candidates']} candidates, kept {summary['kept']} (dropped: {dropped})"
        where = summary["files"]["dataset"]
    return [head, usage_line(summary["usage"]), f"time: {summary['seconds']:.1f} s", f"written: {where}"]


def teach_lines(summary: dict[str, Any]) -> list[str]:
    """One line per round: training size, dev and test accuracy, errors, examples added."""
    lines = []
    for r in summary.get("rounds", []):
        test = (r.get("test") or {}).get("accuracy")
        shown = "n/a" if test is None else f"{test:.4f}"
        lines.append(
            f"round {r['round']}: train {r['train_size']} · dev {r['dev']:.4f} · test {shown} · "
            f"dev errors {r['dev_errors']} · added {r.get('added', 0)}"
            + (f" · {r['stopped']}" if "stopped" in r else "")
        )
    if "teacher_usage" in summary:
        lines.append(usage_line(summary["teacher_usage"]))
    return lines
