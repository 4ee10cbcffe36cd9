"""OMG Load Concept: files by name from the loras folder, an append-only concept chain, tooltips everywhere."""

import pytest

from comfy_host import PromptFailed

CHECKPOINT = "omg-tiny-sd15.safetensors"


def _node(comfy):
    return comfy.NODE_CLASS_MAPPINGS["OMGLoadConcept"]


def test_node_is_registered_with_tooltips_on_every_input_and_output(object_info):
    info = object_info["OMGLoadConcept"]
    assert info["display_name"] == "OMG Load Concept" and info["category"] == "OMG/concepts"
    inputs = {**info["input"]["required"], **info["input"].get("optional", {})}
    assert set(inputs) == {"model", "clip", "lora_name", "trigger", "strength", "concepts"}
    assert set(info["input"].get("optional", {})) == {"trigger", "concepts"}
    for name, spec in inputs.items():
        assert spec[1].get("tooltip"), f"input {name} needs a tooltip"
    assert info["output"] == ["OMG_CONCEPTS"] and all(info["output_tooltips"])


def test_lora_choices_are_names_from_the_loras_folder(object_info):
    choices = object_info["OMGLoadConcept"]["input"]["required"]["lora_name"][1]["options"]
    assert "omg-test-cat.safetensors" in choices
    assert not any(c.startswith("/") for c in choices)


def test_chain_appends_without_changing_the_incoming_list(comfy, sd15):
    model, clip, _ = sd15
    node = _node(comfy)
    (first,) = node.execute(model, clip, "omg-test-cat.safetensors").args
    (second,) = node.execute(model, clip, "omg-test-dog.safetensors", "", 0.5, first).args
    assert [c.triggers for c in first] == [("omgcat",)]
    assert [c.triggers for c in second] == [("omgcat",), ("omgdog",)]
    assert second[1].strength == 0.5 and second[1].embeddings[0].token == "omgdog"


def test_duplicate_trigger_in_the_chain_is_refused_by_the_node(comfy, sd15):
    model, clip, _ = sd15
    node = _node(comfy)
    (chain,) = node.execute(model, clip, "omg-test-cat.safetensors").args
    with pytest.raises(ValueError, match="trigger 'omgcat' of concept 'dog' is already used by concept 'cat'"):
        node.execute(model, clip, "omg-test-dog.safetensors", "omgcat", 1.0, chain)


def _graph(lora_name: str) -> dict:
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": CHECKPOINT}},
        "2": {
            "class_type": "OMGLoadConcept",
            "inputs": {"model": ["1", 0], "clip": ["1", 1], "lora_name": "omg-test-cat.safetensors", "strength": 1.0},
        },
        "3": {
            "class_type": "OMGLoadConcept",
            "inputs": {
                "model": ["1", 0],
                "clip": ["1", 1],
                "lora_name": lora_name,
                "strength": 1.0,
                "concepts": ["2", 0],
            },
        },
        "4": {"class_type": "OMGOrthogonalityReport", "inputs": {"concepts": ["3", 0]}},
        "5": {"class_type": "PreviewImage", "inputs": {"images": ["4", 0]}},
    }


def test_chain_runs_in_a_comfyui_workflow(host):
    host.run(_graph("omg-test-dog.safetensors"))
    (concepts,) = host.node_outputs("3")[0]
    assert [c.name for c in concepts] == ["cat", "dog"]


@pytest.mark.parametrize("name", ["../checkpoints/" + CHECKPOINT, "/etc/hostname"])
def test_a_path_instead_of_a_name_is_refused(host, name):
    with pytest.raises(PromptFailed) as failed:
        host.run(_graph(name))
    if "prompt invalid" in str(failed.value):
        # ComfyUI 0.33's validator checks the combo's list itself, at queue time.
        assert "Value not in list" in str(failed.value) and "lora_name" in str(failed.value)
        return
    # Older validators let it through to the node, which refuses it; the executor records that.
    errors = [d["exception_message"] for e, d in host.executor.status_messages if e == "execution_error"]
    assert errors and "is not a file in ComfyUI's loras folder: pick a concept from the list" in errors[-1]
