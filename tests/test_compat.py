from importlib.metadata import version

from pythia_dynamics import compat


def test_backends_follow_the_installed_transformer_lens():
    major = int(version("transformer-lens").split(".")[0])
    assert compat.has_transformer_bridge()
    assert compat.has_hooked_transformer() == (major < 4)
    assert compat.available_backends() == (["hooked", "bridge"] if major < 4 else ["bridge"])


def test_only_compat_imports_version_specific_names():
    import pathlib

    package = pathlib.Path(compat.__file__).parent
    offenders = [
        str(path.relative_to(package))
        for path in package.rglob("*.py")
        if path.name != "compat.py"
        and any(name in path.read_text() for name in ("HookedTransformer", "TransformerBridge", "model_bridge"))
        and "import" in path.read_text()
        and any(
            line.strip().startswith(("from transformer_lens", "import transformer_lens"))
            for line in path.read_text().splitlines()
        )
    ]
    assert offenders == []
