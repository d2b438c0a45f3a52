"""The query-router registry: names, spec parsing, plugins, saved routers of a plugin."""

import dataclasses
import json
import subprocess
import sys
import textwrap

import pytest
import torch

from dynroute.common.registry import PLUGINS_ENV
from dynroute.llm import (
    QUERY_ROUTERS,
    OutcomeTable,
    QueryRouter,
    load_router,
    make_query_router,
    register_query_router,
)
from dynroute.llm.routers.knn import KNN

#: A query router in a module of its own, outside dynroute: the first model for short
#: queries, the second for long ones (scores learned from the training means).
PLUGIN = """
import dataclasses

import torch

from dynroute.llm import QueryRouter, register_query_router


@register_query_router("{name}")
@dataclasses.dataclass(eq=False)
class LongToSecond(QueryRouter):
    uses_embedding = False
    chars: int = 20

    def _fit(self, train, z):
        self.tensors["mean"] = torch.from_numpy(train.quality.mean(0)).float()

    def _predict(self, queries, z):
        long = torch.tensor([[float(len(q) > self.chars)] for q in queries])  # [Q, 1]
        bonus = torch.cat([1 - long, long], 1)  # [Q, 2]
        return self.tensors["mean"] + bonus
"""


def table():
    queries = ["short", "tiny", "a much longer question here", "another long question, yes"]
    return OutcomeTable.from_rows(queries, ["small", "big"], [[1, 1]] * 4, [[1, 5]] * 4)


@pytest.fixture
def plugin(tmp_path, monkeypatch, request):
    """A module ``<name>.py`` on sys.path defining router ``<name>``, named in
    DYNROUTE_PLUGINS and not imported yet; unregistered afterwards."""
    name = f"qr_plugin_{request.node.name.split('[')[0][5:]}"
    (tmp_path / f"{name}.py").write_text(PLUGIN.format(name=name))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv(PLUGINS_ENV, name)
    yield name
    QUERY_ROUTERS.pop(name, None)
    sys.modules.pop(name, None)


def test_every_shipped_router_is_registered_under_its_name():
    assert {"best_single", "cascade", "knn", "oracle", "random"} <= set(QUERY_ROUTERS)
    for name, cls in QUERY_ROUTERS.items():
        assert issubclass(cls, QueryRouter) and cls.name == name
        assert make_query_router(name).to_dict()["name"] == name


def test_a_taken_name_raises():
    with pytest.raises(ValueError, match=r"query router 'knn' is taken by .*knn\.KNN"):

        @register_query_router("knn")
        @dataclasses.dataclass(eq=False)
        class OtherKNN(QueryRouter):
            pass

    assert QUERY_ROUTERS["knn"] is KNN


def test_only_query_routers_register():
    with pytest.raises(TypeError, match="must subclass QueryRouter"):
        register_query_router("not_a_router")(dict)
    with pytest.raises(ValueError, match="not a valid name"):
        register_query_router("k-nn")
    assert "not_a_router" not in QUERY_ROUTERS


@pytest.mark.parametrize(
    ("spec", "error", "match"),
    [
        ("knn:k=", ValueError, r"query router 'knn:k=': .*\(e\.g\. knn:k=10\), got 'k='"),
        ("knn:k", ValueError, r"query router 'knn:k'.*e\.g\. knn:k=10"),
        ({"k": 3}, ValueError, r"query router \{'k': 3\} has no 'name' \(e\.g\. knn:k=10\)"),
        ("knn:kk=3", TypeError, r"knn: unknown argument\(s\) \['kk'\]; accepted: seed, k"),
        ("nope", ValueError, rf"unknown query router 'nope'; known: .*knn.*{PLUGINS_ENV}"),
    ],
)
def test_bad_specs_name_the_router_and_the_remedy(spec, error, match):
    with pytest.raises(error, match=match):
        make_query_router(spec)


def test_both_spec_forms_and_keyword_overrides():
    a = make_query_router("cascade:scorer=mlp,threshold=0.25", seed=3)
    b = make_query_router({"name": "cascade", "scorer": "mlp", "threshold": 0.25, "seed": 3})
    assert (
        a.to_dict()
        == b.to_dict()
        == {
            "name": "cascade",
            "seed": 3,
            "scorer": "mlp",
            "threshold": 0.25,
        }
    )
    assert make_query_router(a.to_dict()).to_dict() == a.to_dict()  # round trip


def test_a_plugin_router_fits_saves_and_loads(plugin, tmp_path):
    assert plugin not in QUERY_ROUTERS and plugin not in sys.modules
    router = make_query_router(f"{plugin}:chars=10").fit(table())  # imports the plugin
    assert type(router).__module__ == plugin and router.name == plugin
    queries = ["hi", "a question longer than ten characters"]
    assert router.route(queries) == ["small", "big"]
    router.save(tmp_path / "saved")
    loaded = load_router(tmp_path / "saved")
    assert loaded.to_dict() == {"name": plugin, "seed": 0, "chars": 10}
    assert torch.equal(loaded.predict(queries), router.predict(queries))


def run_python(code, env_plugins=None, cwd=None):
    import os

    env = {k: v for k, v in os.environ.items() if k != PLUGINS_ENV}
    if env_plugins:
        env[PLUGINS_ENV] = env_plugins
    env["PYTHONPATH"] = os.pathsep.join([str(cwd), *sys.path])
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=300,
    )


@pytest.mark.slow  # ~20 s: the fast suite keeps under 15 min on 2 cores
def test_a_saved_plugin_router_loads_in_a_fresh_process(plugin, tmp_path):
    rows = json.dumps([list(table().queries), [[1, 1]] * 4, [[1, 5]] * 4])
    fit = run_python(
        f"""
        import json
        from dynroute.llm import OutcomeTable, make_query_router
        q, quality, cost = json.loads({rows!r})
        t = OutcomeTable.from_rows(q, ["small", "big"], quality, cost)
        make_query_router("{plugin}").fit(t).save("saved")
        """,
        plugin,
        tmp_path,
    )
    assert fit.returncode == 0, fit.stderr
    route = "from dynroute.llm import load_router; print(load_router('saved').route(['hi']))"
    ok = run_python(route, plugin, tmp_path)
    assert ok.returncode == 0 and ok.stdout.split() == ["['small']"], ok.stderr
    # Without the plugin the saved router names its file and how to find the class.
    missing = run_python(route, None, tmp_path)
    assert missing.returncode != 0
    assert "config.json" in missing.stderr and f"unknown query router '{plugin}'" in missing.stderr
    assert PLUGINS_ENV in missing.stderr
