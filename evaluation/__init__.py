"""The paper's evaluations, as small parts that the `jitnet eval` commands wire together.

- `davis_metrics`: DAVIS region (J) and contour (F) measures and their statistics.
- `davis_data`: reading any folder in the DAVIS layout.
- `flow`: the optical-flow label propagation baselines.
- `label_cache`: teacher labels kept on disk so a re-run never re-runs the teacher.
- `cost`: speedup over running the teacher on every frame (measured time or FLOPs).
- `report`: Markdown tables and timeline plots in the paper's layout.
- `teacher_labels`: the teacher named by `--teacher`, its labels on every frame (cached), and
  `CachedTeacher`, the agent's teacher interface over those labels.
- `student`: which student every method starts from (`--artifacts`, `--init`, default) and its FLOPs.
- `baselines`: online distillation, fixed stride, no adaptation, offline oracle, flow -- one clip each.
- `stream_eval`, `davis_eval`: the two protocols; `cli`: `jitnet eval stream|davis`.

Nothing is imported here, so `import evaluation` stays cheap.
"""
