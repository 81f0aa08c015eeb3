"""The test example in the README's "Testing your bot" section runs and passes as written."""

from __future__ import annotations

import re

import pytest

from tests.helpers import ROOT


def _example() -> str:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Testing your bot", 1)[1]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match, "the section has a python example"
    return match.group(1)


async def test_the_readme_testing_example_passes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)  # the example names a fixture file by its path in the repository
    namespace: dict[str, object] = {"__name__": "readme_example"}
    exec(compile(_example(), "README.md", "exec"), namespace)
    tests = [v for k, v in namespace.items() if k.startswith("test_") and callable(v)]
    assert len(tests) == 2
    for test in tests:
        await test()  # type: ignore[operator]
