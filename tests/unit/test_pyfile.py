"""Python model files and the loader: errors name the file (and line); every example loads and runs."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import torch

from gradcheck_service.checks.loss import resolve_loss
from gradcheck_service.definitions import DefinitionError, load_definition
from gradcheck_service.definitions.pyfile import load_python_file

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

GOOD = """
import torch
from torch import nn

def build():
    torch.manual_seed(0)
    return nn.Linear(3, 2), torch.randn(4, 3)
"""


def write(tmp_path: Path, text: str, name: str = "model.py") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def refused(path: Path | str) -> DefinitionError:
    with pytest.raises(DefinitionError) as caught:
        load_definition(str(path))
    assert str(Path(path).name) in str(caught.value)  # every message names the file
    return caught.value


@pytest.mark.parametrize("path", sorted(p for p in EXAMPLES.iterdir() if p.suffix in (".py", ".json")),
                         ids=lambda p: p.name)
def test_every_example_loads_and_runs_forward_and_backward(path: Path) -> None:
    definition = load_definition(str(path))
    params = [p for p in definition.module.parameters() if p.requires_grad]
    inputs = tuple(x.detach().requires_grad_(x.is_floating_point()) for x in definition.inputs)
    loss = resolve_loss(definition.loss_fn, 0)(definition.module(*inputs), *inputs)
    assert loss.dim() == 0 and torch.isfinite(loss)
    grads = torch.autograd.grad(loss, params)
    assert all(torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)


def test_python_file_definition() -> None:
    definition = load_definition(str(EXAMPLES / "transformer_block.py"))
    assert definition.kind == "python" and definition.name == "transformer_block"
    assert definition.source == (EXAMPLES / "transformer_block.py").read_text()
    assert definition.metadata["path"] == str((EXAMPLES / "transformer_block.py").resolve())
    (tokens,) = definition.inputs
    assert tokens.dtype == torch.int64
    assert definition.loss_fn is not None and definition.loss_fn.__name__ == "loss_fn"


def test_example_custom_functions_are_correct_and_buggy_as_advertised() -> None:
    good = load_python_file(EXAMPLES / "custom_function.py")
    bad = load_python_file(EXAMPLES / "buggy_custom_function.py")
    x = torch.randn(5, 8, dtype=torch.float64, requires_grad=True)
    scale = torch.rand(8, dtype=torch.float64, requires_grad=True)
    good_fn = type(good.module.activation).forward.__globals__["ScaledSoftsignFunction"]
    assert torch.autograd.gradcheck(good_fn.apply, (x, scale))
    buggy = bad.module.get_submodule("blocks.1.activation")
    assert not torch.autograd.gradcheck(buggy, (x,), raise_exception=False)
    for name in ("blocks.0.activation", "blocks.2.activation"):  # the other activations are PyTorch's own
        assert torch.autograd.gradcheck(bad.module.get_submodule(name), (x,))


def test_inputs_may_be_a_tuple_and_loss_fn_is_picked_up(tmp_path: Path) -> None:
    path = write(tmp_path, """
        import torch
        from torch import nn

        class Pair(nn.Module):
            def forward(self, a, ids):
                return a * ids.float()

        def build():
            return Pair(), [torch.ones(2), torch.tensor([1, 2])]

        def loss_fn(output, a, ids):
            return output.sum() * 2
    """)
    definition = load_definition(str(path))
    assert len(definition.inputs) == 2
    assert definition.loss_fn is not None
    assert definition.loss_fn(definition.module(*definition.inputs), *definition.inputs).item() == 6.0


def test_helpers_next_to_the_file_can_be_imported(tmp_path: Path) -> None:
    write(tmp_path, "WIDTH = 7\n", "helper_for_model.py")
    path = write(tmp_path, """
        import torch
        from torch import nn
        from helper_for_model import WIDTH

        def build():
            return nn.Linear(WIDTH, 1), torch.randn(2, WIDTH)
    """)
    assert load_definition(str(path)).module.in_features == 7


def test_two_files_with_the_same_name_do_not_collide(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first = write(tmp_path / "a", GOOD)
    second = write(tmp_path / "b", GOOD.replace("nn.Linear(3, 2)", "nn.Linear(3, 5)"))
    assert load_definition(str(first)).module.out_features == 2
    assert load_definition(str(second)).module.out_features == 5
    assert load_definition(str(first)).module.out_features == 2


def test_missing_file(tmp_path: Path) -> None:
    error = refused(tmp_path / "absent.py")
    assert "no such file" in str(error)


def test_directory_is_not_a_model(tmp_path: Path) -> None:
    (tmp_path / "pkg.py").mkdir()
    assert "not a regular file" in str(refused(tmp_path / "pkg.py"))


def test_syntax_error_names_the_line(tmp_path: Path) -> None:
    path = write(tmp_path, "import torch\n\ndef build(:\n    pass\n")
    error = refused(path)
    assert "syntax error at line 3" in str(error)
    assert error.problems[0].path == f"{path}:3"


def test_no_build_function(tmp_path: Path) -> None:
    assert "defines no build() function" in str(refused(write(tmp_path, "build = 3\n")))


def test_build_with_required_arguments(tmp_path: Path) -> None:
    error = refused(write(tmp_path, "def build(width):\n    pass\n"))
    assert "must take no arguments" in str(error) and "width" in str(error)


def test_exception_in_build_gives_type_message_and_line(tmp_path: Path) -> None:
    path = write(tmp_path, """
        import torch

        def helper():
            return torch.zeros(2) @ torch.zeros(3)

        def build():
            return helper()
    """)
    error = refused(path)
    message = str(error)
    assert "build() raised RuntimeError" in message
    assert "line 5: return torch.zeros(2) @ torch.zeros(3)" in message  # the innermost line in the user's file
    assert error.problems[0].path == f"{path.resolve()}:5"


def test_exception_while_running_the_file(tmp_path: Path) -> None:
    error = str(refused(write(tmp_path, "import torch\nWIDTH = 1 / 0\n")))
    assert "running the file raised ZeroDivisionError: division by zero (line 2: WIDTH = 1 / 0)" in error


def test_missing_import_in_the_file(tmp_path: Path) -> None:
    error = str(refused(write(tmp_path, "import no_such_package_for_gradcheck\n")))
    assert "ModuleNotFoundError" in error and "no_such_package_for_gradcheck" in error


def test_sys_exit_in_the_file_does_not_exit(tmp_path: Path) -> None:
    assert "SystemExit" in str(refused(write(tmp_path, "import sys\nsys.exit(3)\n")))


@pytest.mark.parametrize(("body", "expected"), [
    ("return nn.Linear(3, 2)", "expected a pair (module, inputs)"),
    ("return nn.Linear(3, 2), torch.ones(3), 1", "expected a pair (module, inputs)"),
    ("return lambda x: x, torch.ones(3)", "expected a torch.nn.Module"),
    ("return nn.Linear(3, 2), [[1.0, 2.0, 3.0]]", "item 0 is a list, not a Tensor"),
    ("return nn.Linear(3, 2), (torch.ones(3), 'x')", "item 1 is a str"),
    ("return nn.Linear(3, 2), {'x': torch.ones(3)}", "inputs of type dict"),
])
def test_wrong_return_types(tmp_path: Path, body: str, expected: str) -> None:
    path = write(tmp_path, f"import torch\nfrom torch import nn\n\ndef build():\n    {body}\n")
    assert expected in str(refused(path))


def test_loss_fn_must_be_callable(tmp_path: Path) -> None:
    assert "loss_fn is a float" in str(refused(write(tmp_path, GOOD + "\nloss_fn = 0.5\n")))


def test_undecodable_file(tmp_path: Path) -> None:
    path = tmp_path / "model.py"
    path.write_bytes(b"\xff\xfe\x00 binary")
    assert "not UTF-8" in str(refused(path))


# --- the loader: dispatch on suffix, JSON errors with line and column ------------------------------------------------


def test_unsupported_suffix(tmp_path: Path) -> None:
    path = tmp_path / "model.onnx"
    path.write_text("x")
    error = str(refused(path))
    assert "'.onnx'" in error and ".json model spec" in error and ".py model file" in error


def test_json_syntax_error_has_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "spec.json"
    path.write_text('{\n  "input": {"shape": [2, 3]},\n  "layers": [\n    {"type": "relu"},\n  ]\n}\n')
    error = refused(path)
    assert "invalid JSON" in str(error) and "line 5, column 3" in str(error)


@pytest.mark.parametrize(("text", "expected"), [
    ('{"input": {"shape": [2, NaN]}, "layers": [{"type": "relu"}]}', "$.input.shape[1]: not a finite number"),
    ('{"input": {"shape": [2]}, "layers": [{"type": "dropout", "p": 1e999}]}', "$.layers[0].p: not a finite number"),
    ('{"seed": 1, "seed": 2, "input": {"shape": [2]}, "layers": [{"type": "relu"}]}',
     "$: the key 'seed' appears more than once"),
    ('{"input": {"shape": [2, ' + "9" * 5000 + ']}, "layers": []}', "digits"),
    ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
    ("", "Expecting value"),
])
def test_json_that_python_would_accept_or_choke_on_is_refused_cleanly(tmp_path: Path, text: str,
                                                                       expected: str) -> None:
    path = tmp_path / "spec.json"
    path.write_text(text)
    assert expected in str(refused(path))


def test_spec_file_errors_name_the_file_and_the_json_path(tmp_path: Path) -> None:
    path = tmp_path / "net.json"
    path.write_text('{"input": {"shape": [2, 3]}, "layers": [{"type": "linear", "out_features": "4"}]}')
    error = refused(path)
    assert str(error).startswith(f"{path}: invalid model spec")
    assert [p.path for p in error.problems] == ["$.layers[0].out_features"]


def test_spec_file_name_and_source(tmp_path: Path) -> None:
    path = tmp_path / "tiny.json"
    text = '{"input": {"shape": [2, 3]}, "layers": [{"type": "tanh"}]}'
    path.write_text(text)
    definition = load_definition(str(path))
    assert (definition.name, definition.kind, definition.source) == ("tiny", "spec", text)
