"""Expert-parallel loading of mixture-of-experts checkpoints (torch_safetensors.distributed's
ExpertPlan): a tiny random MixtralForCausalLM from transformers' own classes, saved both by
save_pretrained (per-expert tensors, ``block_sparse_moe.experts.N.w1``) and as the model's own
state dict (fused experts, ``mlp.experts.gate_up_proj`` [E, 2I, H]). Local plans check what each
rank holds and reads; gloo runs at 2 and 4 ranks (distributed_worker.py) check that the gathered
tensors equal the original bit for bit and that a model built from them computes the original's
logits exactly."""
import json
import os
import sys

import pytest
import torch
import torch.distributed as dist

from torch_safetensors import SafetensorError, open_checkpoint, save_file
from torch_safetensors.distributed import ExpertPlan, ShardPlan, load_for_rank

sys.path.insert(0, os.path.dirname(__file__))
from distributed_worker import MIXTRAL_TP  # noqa: E402
from test_distributed import run_ranks  # noqa: E402

transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                                reason="this torch has no gloo")

EXPERTS = 4


@pytest.fixture(scope="module")
def mixtral(tmp_path_factory):
    torch.manual_seed(0)
    config = transformers.MixtralConfig(
        vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, num_local_experts=EXPERTS,
        num_experts_per_tok=2)
    model = transformers.MixtralForCausalLM(config)
    directory = str(tmp_path_factory.mktemp("moe") / "mixtral")
    model.save_pretrained(directory)
    os.makedirs(directory + "-stacked")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()},
              os.path.join(directory + "-stacked", "model.safetensors"))
    with open_checkpoint(directory) as f:
        assert "model.layers.0.block_sparse_moe.experts.3.w1.weight" in f.keys()
    return directory


def originals(path):
    with open_checkpoint(path) as f:
        return {name: f.get_tensor(name) for name in f.keys()}


def expert_of(name):
    parts = name.split(".")
    return int(parts[parts.index("experts") + 1]) if "experts" in parts else None


@pytest.mark.parametrize("world", [1, 2, 4])
def test_each_rank_reads_its_experts_and_the_replicated_tensors_only(mixtral, world):
    want = originals(mixtral)
    replicated = sum(t.nbytes for n, t in want.items() if expert_of(n) is None)
    for rank in range(world):
        mine = load_for_rank(mixtral, ShardPlan(experts=ExpertPlan(EXPERTS)), rank, world)
        owned = {e for e in range(EXPERTS) if e // (EXPERTS // world) == rank}
        assert {expert_of(n) for n in mine.tensors} - {None} == owned
        assert mine.tensor_bytes == replicated + sum(
            t.nbytes for n, t in want.items() if expert_of(n) in owned)
        assert all(torch.equal(t, want[n]) for n, t in mine.tensors.items())
        assert "model.layers.1.block_sparse_moe.gate.weight" in mine.tensors  # the router
        assert mine.header_bytes > 0


def test_stacked_experts_read_each_ranks_rows(mixtral):
    want = originals(mixtral + "-stacked")
    name = "model.layers.0.mlp.experts.gate_up_proj"
    assert want[name].shape[0] == EXPERTS
    round_robin = ShardPlan(experts=ExpertPlan(EXPERTS, placement="round_robin"))
    mine = load_for_rank(mixtral + "-stacked", round_robin, 1, 2)
    assert torch.equal(mine.tensors[name], want[name][1::2])
    explicit = ShardPlan(experts=ExpertPlan(EXPERTS, placement={0: 1, 1: 0, 2: 0, 3: 1}))
    mine = load_for_rank(mixtral + "-stacked", explicit, 1, 2)
    assert torch.equal(mine.tensors[name], want[name][[0, 3]])
    # EP x TP: 2 EP ranks x 2 TP ranks; rank 3 holds experts 2, 3 and the second half of gate
    # and of up.
    mine = load_for_rank(mixtral + "-stacked",
                         ShardPlan(MIXTRAL_TP, experts=ExpertPlan(EXPERTS, ep_size=2)), 3, 4)
    gate_up = want[name][2:]
    half = gate_up.shape[1] // 4
    assert torch.equal(mine.tensors[name],
                       torch.cat([gate_up[:, half:2 * half], gate_up[:, 3 * half:]], 1))
    down = "model.layers.1.mlp.experts.down_proj"
    assert torch.equal(mine.tensors[down], want[down][2:, :, want[down].shape[2] // 2:])


def test_bad_expert_plans_are_clear_errors(mixtral):
    with pytest.raises(SafetensorError, match="expert index 3 is outside the expert plan's 3"):
        load_for_rank(mixtral, ShardPlan(experts=ExpertPlan(3)), 0, 1)
    with pytest.raises(SafetensorError, match=r"experts\.\w+': stacked experts .* expected 8"):
        load_for_rank(mixtral + "-stacked", ShardPlan(experts=ExpertPlan(8)), 0, 2)
    with pytest.raises(SafetensorError, match="expert 2 is owned twice"):
        load_for_rank(mixtral, ShardPlan(experts=ExpertPlan(
            EXPERTS, placement=[[0, 1, 2], [2, 3]])), 0, 2)
    with pytest.raises(SafetensorError, match="expert 3 is owned by no EP rank"):
        load_for_rank(mixtral, ShardPlan(experts=ExpertPlan(
            EXPERTS, placement={0: 0, 1: 0, 2: 1})), 0, 2)
    with pytest.raises(SafetensorError, match="unknown placement 'random'"):
        load_for_rank(mixtral, ShardPlan(experts=ExpertPlan(EXPERTS, placement="random")), 0, 2)


@pytest.mark.parametrize("world", [2, 4])
def test_gloo_expert_parallel_gathers_the_original_and_its_forward(mixtral, world, tmp_path):
    gathered = "ep,ep_stacked,ep_tp,ep_tp_stacked,ep_single"  # load_for_rank, then all-gather
    reports = run_ranks(world, gathered + ",ep_dtensor", mixtral, tmp_path, timeout=300)
    want = originals(mixtral)
    replicated = sum(t.nbytes for n, t in want.items() if expert_of(n) is None)
    for rank, report in enumerate(reports):
        assert "error" not in report and "exit" not in report, report
        for scenario in gathered.split(","):
            r = report[scenario]
            assert r["same_keys"] and r["bit_equal"] and r["forward_equal"], (rank, scenario)
        owned = {e for e in range(EXPERTS) if e // (EXPERTS // world) == rank}
        assert report["ep"]["tensor_bytes"] == replicated + sum(
            t.nbytes for n, t in want.items() if expert_of(n) in owned)
        stacked = report["ep_stacked"]["shapes"]["model.layers.0.mlp.experts.gate_up_proj"]
        assert stacked[0] == EXPERTS // world
        if world == 4:  # 2 EP x 2 TP: two experts per rank, half of each expert's gate_up rows
            assert report["ep_tp_stacked"]["shapes"][
                "model.layers.0.mlp.experts.gate_up_proj"] == [2, 32, 16]
        assert report["ep_single"]["tensor_bytes"] == (
            sum(t.nbytes for t in originals(mixtral + "-stacked").values()) if rank == 0 else 0)
        # The same checkpoint into a model whose fused experts are DTensors (EP; 4 ranks: EP x TP).
        r = report["ep_dtensor"]
        assert not r["missing"] and not r["unexpected"] and r["same_keys"], (rank, r)
        assert r["full_equal"] and r["plain_equal"] and r["local_equal"], (rank, r)
        assert len(r["dtensors"]) == 4, r["dtensors"]  # 2 layers x (gate_up_proj, down_proj)
        tp = 2 if world == 4 else 1
        assert r["local_shapes"]["model.layers.0.mlp.experts.gate_up_proj"] == [
            EXPERTS * tp // world, 64 // tp, 16]
        assert r["local_shapes"]["model.layers.1.mlp.experts.down_proj"] == [
            EXPERTS * tp // world, 16, 32 // tp]
    with open(os.path.join(mixtral, "config.json"), encoding="utf-8") as f:
        assert json.load(f)["num_local_experts"] == EXPERTS
