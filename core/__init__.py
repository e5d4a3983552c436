"""The bottom layer: plain types every side shares (config, artifact manifest, geometry,
loss targets, metrics, class groups, the teacher's answer). It imports nothing of ours,
so export/, edge_agent/ and teacher_server/ can all depend on it without depending on each other."""
