"""A peer's gossiped record is data, not trusted: odd shapes read as absent."""

from __future__ import annotations

from node.cluster.view import model_info


def test_model_info_reads_only_well_formed_entries() -> None:
    assert model_info(None, "m") is None
    for models in ("junk", 7, ["m"], {"m": "ready"}, {"m": None}, {"other": {}}):
        assert model_info({"models": models}, "m") is None, models
    assert model_info({"models": {"m": {"state": "ready"}}}, "m") == {"state": "ready"}
