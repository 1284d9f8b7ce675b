"""Reading a run: benchmark JSON into cases, pure statistics, verdicts, summaries, ablation, cost model, comparison."""
