"""assets/recording.py: what a CLI stage leaves in the project's Dagster instance, recorded again and again."""

from __future__ import annotations

from dagster import AssetCheckKey, AssetCheckResult, AssetKey, Output

from assets.recording import project_instance, record


def test_a_stage_recorded_twice_for_one_target_keeps_both_and_reads_the_latest(tmp_path):
    """A second `vitforge demo` (or `dvc repro` after a param change) records the same target's checks again:
    both evaluations are kept, and the partition's latest is the second."""
    from dagster._core.storage.event_log.base import PartitionKeyFilter

    key = AssetCheckKey(AssetKey("edge_package"), "check_edge_package_parity")
    for passed in (True, False):
        record(tmp_path, "edge_package", Output({"n": 1}, metadata={"passed": passed}),
               [AssetCheckResult(check_name=key.name, passed=passed, metadata={"round": int(passed)})],
               partition="box")
    record(tmp_path, "edge_package", None, [AssetCheckResult(check_name=key.name, passed=True)], partition="other")
    with project_instance(tmp_path) as instance:
        history = instance.event_log_storage.get_asset_check_execution_history(
            key, limit=10, partition_filter=PartitionKeyFilter(key="box"))
        assert [h.status.value for h in history] == ["FAILED", "SUCCEEDED"]  # newest first
        assert len({h.run_id for h in history}) == 2  # one run id per recording
        latest = instance.event_log_storage.get_latest_asset_check_execution_by_key(
            [key], partition_filter=PartitionKeyFilter(key="box"))
        assert latest[key].status.value == "FAILED"
        assert set(instance.get_dynamic_partitions("targets")) == {"box", "other"}
