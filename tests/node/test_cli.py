"""The `rumor` CLI entry points."""

from __future__ import annotations

import pytest

from node.cli import main


def test_unknown_command_exits_2() -> None:
    with pytest.raises(SystemExit) as exc:
        main(["no-such-command"])
    assert exc.value.code == 2


def test_export_models_writes_loadable_files(tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    assert main(["export-models", "--out", str(tmp_path)]) == 0
    names = sorted(p.name for p in tmp_path.iterdir())
    assert "mlp.pt" in names and "transformer.pt2" in names and "mlp.state.pt.json" in names
    assert str(tmp_path / "mlp.pt") in capsys.readouterr().out
