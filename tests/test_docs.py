"""The documentation: a short README whose links land, every page in the site's navigation,
the generated pages' markers, the benchmark results files, and the version shown everywhere.

`make docs` (in CI) builds the site with `mkdocs build --strict`, which also fails on a broken
link or anchor inside docs/; these checks are the ones that need no build.
"""

import json
import re
import tomllib

import pytest
import yaml
from click.testing import CliRunner

from bench import results
from covidscan import __version__
from tests.conftest import ROOT

DOCS = ROOT / "docs"
LINK = re.compile(r"\]\(([^)\s]+)\)")


def nav_pages(nav) -> list[str]:
    pages = []
    for item in nav:
        value = next(iter(item.values())) if isinstance(item, dict) else item
        pages += nav_pages(value) if isinstance(value, list) else [value]
    return pages


def test_the_readme_is_a_front_door():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 200
    assert "Research use only" in readme
    assert "make run" in readme and "make test" in readme
    assert "covidscan submit" in readme and "curl " in readme


def test_every_link_of_the_readme_and_the_changelog_lands_on_a_file():
    for name in ("README.md", "CHANGELOG.md"):
        for target in LINK.findall((ROOT / name).read_text()):
            if target.startswith(("http://", "https://", "#")):
                continue
            path = ROOT / target.split("#")[0]
            assert path.exists(), f"{name} links to {target}, which does not exist"


def test_every_page_is_in_the_navigation_and_every_entry_is_a_page():
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    listed = nav_pages(config["nav"])
    pages = sorted(str(p.relative_to(DOCS)) for p in DOCS.rglob("*.md"))
    assert sorted(listed) == pages, (
        f"not in mkdocs.yml's nav: {sorted(set(pages) - set(listed))}; "
        f"listed but missing: {sorted(set(listed) - set(pages))}"
    )
    assert len(listed) == len(set(listed))
    assert "pacs.md" in nav_pages(config["nav"][1]["Use it"])
    assert "conformance.md" in listed and "use/api-reference.md" in listed


def test_the_api_reference_is_rendered_from_the_committed_openapi_document():
    page = (DOCS / "use" / "api-reference.md").read_text()
    assert "[OAD(./docs/openapi.json)]" in page  # tests/test_openapi.py keeps that file current
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    assert any("neoteroi.mkdocsoad" in str(plugin) for plugin in config["plugins"])


def test_the_hospital_loop_page_has_its_sections():
    headings = re.findall(r"^## (.+)$", (DOCS / "pacs.md").read_text(), re.M)
    for section in (
        "Destinations",
        "Results back into the PACS",
        "Pulling a cohort",
        "Series completeness",
    ):
        assert section in headings


def test_every_generated_marker_is_known_and_expanded():
    from docs.hooks import expand, generated

    known = generated()
    for page in DOCS.rglob("*.md"):
        text = page.read_text()
        markers = set(re.findall(r"<!-- generated: [^>]* -->", text))
        assert markers <= set(known), f"{page}: unknown markers {markers - set(known)}"
        assert "<!-- generated: " not in expand(text, known)
    performance = (DOCS / "measure" / "performance.md").read_text()
    assert "<!-- generated: bench results -->" in performance


def test_the_results_files_make_one_table_per_kind_of_machine_with_its_flags():
    runs = results.load()
    kinds = {results.machine_kind(run["cpu"]) for run in runs}
    assert len(kinds) >= 3  # the AMD EPYC, and the Intel Xeons with and without AMX
    page = results.render(runs)
    assert sorted(re.findall(r"^## (.+)$", page, re.M)) == sorted(kinds)
    for run in runs:
        assert run["cpu"]["flags"], run["file"]
        assert " ".join(run["cpu"]["flags"]) in page
        assert run["file"] in page
        assert {"fp32", "int8"} <= set(run["precisions"])
    assert "amx_int8" in page and "avx512_bf16" in page


def test_a_results_file_that_lost_a_member_or_a_value_is_refused(tmp_path):
    run = json.loads(sorted(results.RESULTS_DIR.glob("*.json"))[0].read_text())
    (tmp_path / "a.json").write_text(json.dumps({k: v for k, v in run.items() if k != "cpu"}))
    with pytest.raises(ValueError, match="missing cpu"):
        results.load(tmp_path)
    run["table"][0]["values"].pop()
    (tmp_path / "a.json").write_text(json.dumps(run))
    with pytest.raises(ValueError, match="values for 4 precisions"):
        results.load(tmp_path)


def bench_report() -> dict:
    """What `python -m bench` writes, for two precisions (numbers from a real run's shape)."""
    gate = {
        "passed": True,
        "parts": {
            "calibration": {"max_abs_diff": 9.1e-4, "tolerance": 0.02, "label_flips": 0},
            "held_out": {"max_abs_diff": 1.1e-3, "tolerance": 0.02, "label_flips": 0},
        },
    }
    summary, precisions = {}, {}
    for precision, speed in (("fp32", 30.4), ("int8", 104.9)):
        summary[precision] = {
            "served_by": f"OpenVINO {precision}",
            "gate": gate if precision == "int8" else None,
            "engine_images_per_s": speed,
            "decode_ms_per_scan": 1.07,
            "limit_scans_per_s": speed * 0.9,
            "end_to_end_scans_per_s": speed * 0.7,
            "end_to_end_over_limit": 0.78,
            "in_parts_scans_per_s": speed * 0.8,
            "in_parts_over_limit": 0.87,
            "engine_busy_fraction": 0.82,
            "in_parts_engine_busy_fraction": 0.94,
            "in_parts_over_model_predict_fp32": speed * 0.8 / 15.3,
        }
        precisions[precision] = {
            "bulk_parts": {
                "elapsed_s": 6.5,
                "cpu_seconds": {"worker": 11.2, "api": 0.68, "bench client": 0.13, "redis": 0.01},
            }
        }
    return {
        "summary": summary,
        "precisions": precisions,
        "settings": {"max_batch_size": 32, "max_queue_delay_ms": 200, "chunk_size": 32, "cpus": 2},
        "baseline": {"model_predict_fp32_images_per_s": 15.3, "model": {"name": "m"}},
        "cpu": {
            "model": "AMD EPYC 9R14",
            "cpus": 2,
            "flags": ["avx2", "avx512f", "avx512_vnni", "avx512_bf16"],
        },
        "cold_start": {"api_ready_s": 1.71, "worker_ready_s": 17.9, "first_result_s": 18.1},
        "load_average_before": [0.7, 0.6, 0.5],
        "load_average_after": [2.4, 1.0, 0.6],
    }


def test_make_bench_saves_a_results_file_the_docs_render(tmp_path):
    path = results.save(bench_report(), tmp_path)
    assert path.name.endswith("-amd-epyc-with-avx-512-vnni-and-bf16-no-amx.json")
    (run,) = results.load(tmp_path)
    assert run["cpu"]["flags"] == ["avx2", "avx512f", "avx512_vnni", "avx512_bf16"]
    assert run["precisions"] == ["fp32", "int8"]
    rows = {row["row"]: row["values"] for row in run["table"]}
    assert rows["engine on tensors, images/s"] == [30.4, 104.9]
    assert rows["open job in parts: end-to-end, scans/s (/ limit)"][1] == "83.9 (0.87)"
    cpu = rows["CPU seconds in parts: worker, API, client (cores × total)"]
    assert cpu[1] == "11.20, 0.68, 0.13 (13.0)"
    assert rows["gate: max |ΔP| per part, flips"] == [
        "none (the reference)",
        "9.1e-04 / 1.1e-03, 0",
    ]
    page = results.render([run])
    assert "| 104.9 | 94.4 | 73.4 | 83.9 |" in page  # the history row: int8's numbers
    assert "avx2 avx512f avx512_vnni avx512_bf16" in page


def test_the_version_is_the_projects_everywhere(client):
    from cli.main import main

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert __version__ == project
    shown = CliRunner().invoke(main, ["--version"])
    assert shown.exit_code == 0 and shown.output == f"covidscan, version {project}\n"
    answer = client.get("/v1/version")
    assert answer.status_code == 200 and answer.get_json() == {"version": project}
    changelog = (ROOT / "CHANGELOG.md").read_text()
    assert re.search(rf"^## {re.escape(project)} ", changelog, re.M)


def test_the_version_needs_a_key(app):
    answer = app.test_client().get("/v1/version")
    assert answer.status_code == 401
