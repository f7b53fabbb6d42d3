"""Catalogue retrieval with a CLIP / SigLIP dual encoder (the retrieval side of a FROMAGe-style fashion assistant).

    vlmtune retrieve train --model openai/clip-vit-base-patch32 --data data/shop --out runs/fashion-clip
    vlmtune retrieve eval --model runs/fashion-clip --data data/shop --split test
    vlmtune retrieve index --model runs/fashion-clip --catalogue shop.tsv --out indexes/shop
    vlmtune retrieve --index indexes/shop "red striped t-shirt"

encoder.py   DualEncoder: load a checkpoint, embed images and texts (L2-normalised), fingerprint the model
train.py     contrastive fine-tuning with the models' own CLIP / SigLIP losses; best + resumable checkpoints
evaluate.py  image<->text Recall@K on a dataset split (several captions per image), mean / median rank
index.py     the on-disk index (memory-mapped vectors + items), resumable batched build, exact top-k search
tiny.py      tiny random CLIP / SigLIP checkpoints built offline (tests, benchmark)

docs/fashion-retrieval.md walks through the pipeline and what it does and does not share with FROMAGe.
"""
