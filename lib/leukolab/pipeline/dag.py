"""The stage graph of a plan as text and as a picture (matplotlib, tasks in columns by depth)."""

from __future__ import annotations

from pathlib import Path

from leukolab.pipeline.graph import Plan


def depths(the_plan: Plan) -> dict[str, int]:
    """Each task's column: 0 for tasks with no upstream, else one more than its deepest upstream task."""
    depth: dict[str, int] = {}
    for task in the_plan.tasks:
        depth[task.name] = 1 + max((depth[u] for u in task.after), default=-1)
    return depth


def dag_text(the_plan: Plan) -> str:
    """One line per task: name, notebook, timeout, upstream tasks."""
    width = max(len(t.name) for t in the_plan.tasks)
    lines = [f"pipeline {the_plan.pipeline_file} on profile {the_plan.profile}: {len(the_plan.tasks)} tasks"]
    for task in the_plan.tasks:
        timeout = f"timeout {task.timeout:g} s" if task.timeout else "no timeout"
        lines.append(f"  {task.name:<{width}}  {task.notebook.name:<20} {timeout:<16} after: {', '.join(task.after) or '-'}")
    return "\n".join(lines)


def draw_dag(the_plan: Plan, path: Path) -> Path:
    """Write a PNG of the task graph: a box per task (its notebook below its name), an arrow per dependency."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    depth = depths(the_plan)
    columns: dict[int, list[str]] = {}
    for name, column in depth.items():
        columns.setdefault(column, []).append(name)
    height = max(len(names) for names in columns.values())
    figure, axes = plt.subplots(figsize=(2.8 * len(columns) + 1, 1.2 * height + 1))
    axes.set_xlim(-0.6, len(columns) - 0.4)
    axes.set_ylim(-0.6, height - 0.4)
    axes.axis("off")
    colours = plt.get_cmap("tab10")
    stages = list(dict.fromkeys(t.stage for t in the_plan.tasks))
    boxes = {}
    for column, names in columns.items():
        for row, name in enumerate(names):
            task = the_plan[name]
            y = (height - 1) / 2 + (len(names) - 1) / 2 - row
            boxes[name] = axes.text(column, y, f"{name}\n{task.notebook.name}", ha="center", va="center", fontsize=9,
                                    bbox={"boxstyle": "round,pad=0.5", "facecolor": colours(stages.index(task.stage) % 10),
                                          "alpha": 0.35})
    figure.canvas.draw()  # lays the boxes out, so the arrows can be clipped to them
    for task in the_plan.tasks:
        for upstream in task.after:
            axes.annotate("", xy=boxes[task.name].get_position(), xytext=boxes[upstream].get_position(),
                          arrowprops={"arrowstyle": "-|>", "color": "0.3", "patchA": boxes[upstream].get_bbox_patch(),
                                      "patchB": boxes[task.name].get_bbox_patch()})
    axes.set_title(f"{the_plan.pipeline_file.name}, profile {the_plan.profile}", fontsize=10)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(figure)
    return path
