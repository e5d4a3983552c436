"""The paper's evaluations, as small parts that the `jitnet eval` commands wire together.

- `davis_metrics`: DAVIS region (J) and contour (F) measures and their statistics.
- `davis_data`: reading any folder in the DAVIS layout.
- `flow`: the optical-flow label propagation baselines.
- `label_cache`: teacher labels kept on disk so a re-run never re-runs the teacher.
- `cost`: speedup over running the teacher on every frame (measured time or FLOPs).
- `report`: Markdown tables and timeline plots in the paper's layout.

Nothing is imported here, so `import sdk.evaluation` stays cheap.
"""
