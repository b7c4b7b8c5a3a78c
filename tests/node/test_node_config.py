"""Node configuration: TOML < flags < RUMOR_* environment, errors name the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from inference.errors import ConfigError
from node.config import load_node_config


def test_precedence_file_then_flags_then_env(tmp_path: Path) -> None:
    f = tmp_path / "node.toml"
    f.write_text(
        """
        [node]
        name = "from-file"
        http = "127.0.0.1:8000"
        interval = 0.5
        fanout = 4

        [[model]]
        name = "mlp"
        source = "builtin:mlp"
        max_batch_size = 16
        """
    )
    cfg = load_node_config(
        str(f), {"http": "127.0.0.1:9000", "fanout": None}, env={"RUMOR_INTERVAL": "0.25"}
    )
    assert cfg.name == "from-file"  # file
    assert cfg.http == "127.0.0.1:9000"  # flag beats file
    assert cfg.interval == 0.25  # env beats both
    assert cfg.fanout == 4  # an unset flag does not override
    (mc,) = cfg.model_configs()
    assert mc.name == "mlp" and mc.max_batch_size == 16


@pytest.mark.parametrize(
    "flags,env,field",
    [
        ({}, {}, "name"),
        ({"name": "a", "http": "nohost"}, {}, "http"),
        ({"name": "a", "join": ["x:99999"]}, {}, "join"),
        ({"name": "a"}, {"RUMOR_FANOUT": "many"}, "fanout"),
        ({"name": "a", "models": ["m=builtin:mlp,device=tpu"]}, {}, "device"),
        ({"name": "a"}, {"RUMOR_INTERVAL": "-1"}, "interval"),
    ],
)
def test_errors_name_the_field(flags: dict, env: dict, field: str) -> None:
    with pytest.raises(ConfigError) as exc:
        load_node_config(None, flags, env=env)
    assert exc.value.field == field


def test_unknown_setting_in_file(tmp_path: Path) -> None:
    f = tmp_path / "n.toml"
    f.write_text('[node]\nname = "a"\ncolour = "red"\n')
    with pytest.raises(ConfigError, match="colour"):
        load_node_config(str(f), {}, env={})


def test_gossip_knobs_come_from_one_table_flags_and_env(tmp_path: Path) -> None:
    from gossip.config import GossipConfig
    from node.config import load_node_config

    f = tmp_path / "n.toml"
    f.write_text(
        '[node]\nname = "a"\ninterval = 0.5\n[gossip]\nprobe_timeout = 0.4\nsuspicion_max = 6\n'
    )
    cfg = load_node_config(
        str(f),
        {"gossip_opts": ["suspicion_max=7", "indirect_probes=2"]},
        env={"RUMOR_GOSSIP_RETRANSMIT_MULT": "5"},
    )
    g = cfg.gossip_config()
    assert isinstance(g, GossipConfig)
    assert (g.interval, g.probe_timeout, g.suspicion_max, g.indirect_probes) == (0.5, 0.4, 7.0, 2)
    assert g.retransmit_mult == 5 and g.fanout == GossipConfig().fanout  # defaults written once
    for bad, words in (
        ({"gossip_opts": ["nope=1"]}, "gossip.nope: unknown setting"),
        ({"gossip_opts": ["probe_timeout=fast"]}, "gossip.probe_timeout"),
        ({"gossip_opts": ["probe_timeout=-1"]}, "probe_timeout must be positive"),
        ({"gossip_opts": ["justakey"]}, "not KEY=VALUE"),
    ):
        with pytest.raises(ConfigError, match=words):
            load_node_config(None, {"name": "a", **bad}, env={})
