"""The ``pipeline-operator`` command."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from . import crd as crd_module


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="pipeline-operator")
def main() -> None:
    """Run data pipelines through Feldera's lifecycle on Kubernetes."""


@main.command()
@click.option("--output", "-o", type=click.Path(dir_okay=False, path_type=Path),
              help="Write the CRD to this file instead of standard output.")
@click.option("--check", is_flag=True,
              help="Exit 1 if --output differs from what the models generate (for CI).")
def crd(output: Path | None, check: bool) -> None:
    """Print the Pipeline CustomResourceDefinition generated from the models."""
    text = crd_module.to_yaml()
    if output is None:
        if check:
            raise click.UsageError("--check needs --output")
        click.echo(text, nl=False)
        return
    if check:
        current = output.read_text() if output.exists() else ""
        if current != text:
            click.echo(f"{output} is out of date with the models; regenerate it with "
                       f"`pipeline-operator crd --output {output}`", err=True)
            sys.exit(1)
        click.echo(f"{output} matches the models")
        return
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(text)
    click.echo(f"wrote {output}", err=True)


@main.group("control-plane")
def control_plane() -> None:
    """A local etcd + kube-apiserver (plus kubectl and helm) for tests and demos."""


@control_plane.command("fetch")
def control_plane_fetch() -> None:
    """Find or build the binaries (cached by version) and print where they are."""
    from . import controlplane
    binaries = controlplane.ensure_binaries()
    for name, path in binaries.as_dict().items():
        click.echo(f"{name}\t{path}")


@control_plane.command("up")
def control_plane_up() -> None:
    """Start a local control plane and keep it running until Ctrl-C."""
    from . import controlplane
    sys.exit(controlplane.main(["up"]))


if __name__ == "__main__":
    main()
