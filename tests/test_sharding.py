"""Sharded training's configuration logic and state round trips, in one process: the ready
Accelerate configs and what they launch, the launches the trainer refuses, optimizer state saved
whole by parameter name (as a sharded run writes it) loaded into a plain run, and the plain copy
a sharded run's output is rebuilt into. The sharded runs themselves: tests/test_multiprocess.py."""

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from conftest import exit_code
from unmemorize.errors import UserError
from unmemorize.recipes.plan import LAUNCH
from unmemorize.training import sharding

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "accelerate"


def test_each_ready_config_launches_its_strategy():
    found = {path.name for path in CONFIGS.glob("*.yaml")}
    assert found == {"ddp.yaml", "fsdp.yaml", "deepspeed_zero2.yaml", "deepspeed_zero3.yaml"}
    for strategy, path in LAUNCH.items():  # the planner's commands name these files
        settings = sharding.launch_settings(CONFIGS.parent.parent / path)
        assert settings["strategy"] == strategy and settings["mixed_precision"] == "no"
    assert sharding.launch_settings(CONFIGS / "fsdp.yaml")["fsdp_version"] == 2
    assert sharding.launch_settings(CONFIGS / "deepspeed_zero3.yaml")["zero_stage"] == 3


@pytest.mark.parametrize("text,message", [
    ("distributed_type: FSDP\nfsdp_config:\n  fsdp_version: 1\n", "fsdp_version must be 2"),
    ("distributed_type: DEEPSPEED\ndeepspeed_config:\n  zero_stage: 1\n", "zero_stage must be 2 or 3"),
    ("distributed_type: MULTI_GPU\nmixed_precision: bf16\n", "mixed_precision: 'no'"),
    ("distributed_type: XLA\n", "not one the trainer runs"),
])
def test_configs_the_trainer_cannot_use_are_refused(tmp_path, text, message):
    path = tmp_path / "config.yaml"
    path.write_text(text)
    with pytest.raises(UserError, match=message):
        sharding.launch_settings(path)


def test_the_launch_is_read_from_accelerates_variables():
    assert sharding.check_launch({}) == "ddp"
    assert sharding.check_launch({"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "2"}) == "fsdp"
    with pytest.raises(UserError, match="FSDP2"):
        sharding.check_launch({"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "1"})
    # DeepSpeed is not installed here (it builds from source): refused either way, in one line.
    with pytest.raises(UserError, match="DeepSpeed"):
        sharding.check_launch({"ACCELERATE_USE_DEEPSPEED": "true"})


def test_a_deepspeed_launch_of_unlearn_is_one_line_exit_2(tiny_models, tmp_path, monkeypatch, capsys):
    forget = tmp_path / "forget.txt"
    forget.write_text("Alice Johnson lives at 42 Baker Street in London.\n")
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    out = tmp_path / "out"
    assert exit_code(["unlearn", "--model", str(tiny_models["llama"]), "--forget", str(forget), "--cpu",
                      "--out", str(out)]) == 2
    assert "DeepSpeed" in capsys.readouterr().err and not out.exists()


def _trained(model_dir: Path) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    ids = torch.tensor([[1, 5, 6, 7, 8]])
    model(input_ids=ids, labels=ids).loss.backward()
    optimizer.step()
    return model, optimizer


def test_optimizer_state_saved_by_name_loads_into_a_plain_run(tiny_models):
    """A sharded run saves the whole optimizer state keyed by parameter name; a run on any number
    of processes, sharded or not, loads it back to the same moments."""
    model, optimizer = _trained(tiny_models["gemma3"])
    # An unsharded model's "whole state by name" is what the sharded run's gather produces.
    by_name = sharding.full_optimizer_state(model, optimizer)
    assert all(isinstance(key, str) for key in by_name["state"])
    for saved in (by_name, optimizer.state_dict()):  # by name (sharded run), by index (plain run)
        fresh = AutoModelForCausalLM.from_pretrained(tiny_models["gemma3"])
        loaded = torch.optim.AdamW(fresh.parameters(), lr=0.1)
        sharding.load_optimizer_state(fresh, loaded, saved)
        a, b = optimizer.state_dict()["state"], loaded.state_dict()["state"]
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key]["exp_avg"], b[key]["exp_avg"]) and torch.equal(a[key]["exp_avg_sq"], b[key]["exp_avg_sq"])


@pytest.mark.parametrize("arch", ["gemma3", "llama"])  # tied and untied output layers
def test_the_plain_copy_holds_the_same_weights(tiny_models, arch):
    model, _ = _trained(tiny_models[arch])
    copy = sharding.plain_copy(model, lambda: sharding.fresh_architecture(model.config), main=True)
    assert copy is not model
    for (name, a), b in zip(model.state_dict().items(), copy.state_dict().values()):
        assert torch.equal(a, b), name
    assert copy.get_output_embeddings().weight.data_ptr() == copy.get_input_embeddings().weight.data_ptr() \
        or not model.config.tie_word_embeddings
    assert sharding.plain_copy(model, lambda: None, main=False) is None


def test_a_resume_may_split_the_steps_batch_over_another_number_of_processes(monkeypatch, tmp_path):
    from unmemorize.training.resume import check_same_run

    monkeypatch.setenv("WORLD_SIZE", "1")
    check_same_run({"batch_size": 1}, {"batch_size": 2}, tmp_path, saved_processes=2)  # 1 × 2 = 2 × 1
    with pytest.raises(UserError, match=r"--batch-size × processes is 1 × 1 here but 1 × 2"):
        check_same_run({"batch_size": 1}, {"batch_size": 1}, tmp_path, saved_processes=2)
    with pytest.raises(UserError, match=r"--batch-size is 4 here but 2"):  # same processes: as before
        check_same_run({"batch_size": 2}, {"batch_size": 4}, tmp_path, saved_processes=1)
