"""How the digits group's distillation settings were chosen: on a validation split, never test.

    .venv/bin/python scripts/select_digits.py IPC ITERATIONS METHOD LR_LIST BATCH_REAL
    .venv/bin/python scripts/select_digits.py 10 900 atom 0.1,1,10 64

Carves 300 validation images out of digits' training split (seed 123), normalises with the
remaining training images' statistics, distils at each lr_img with snapshots at 1/3, 2/3 and
all of ITERATIONS, and trains 3 seeds (300 epochs) on each snapshot, scoring on validation.
Measured 2026-11-25 (IPC 10, batch_real 64): random 90.00 +- 0.72; lr 0.1: 93.67 (200 it),
94.00 (300); lr 1.0: 94.56 (300), 95.11 (600), 94.67 (900) -> lr_img 1.0 (the spec's), 600 iterations.
"""
import sys
import time

import torch

import atom
from atom import preprocess

torch.set_num_threads(1)
ipc, its, method = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
lrs, batch_real = [float(x) for x in sys.argv[4].split(",")], int(sys.argv[5])
d = atom.load_digits()
perm = torch.randperm(len(d.train_labels), generator=torch.Generator().manual_seed(123))
val, tr = perm[:300], perm[300:]
xtr, ytr, xval, yval = d.train_images[tr], d.train_labels[tr], d.train_images[val], d.train_labels[val]
state = preprocess.fit(xtr, normalize=True)
xtr, xval = preprocess.apply(xtr, state), preprocess.apply(xval, state)
net = dict(width=128, depth=3, act="relu", norm="instancenorm", pool="avg")
ev = dict(epochs=300, net=net, seeds=[0, 1, 2], progress=False)
r = atom.evaluate(*atom.baseline_set("random", xtr, ytr, ipc=ipc, seed=0), xval, yval, **ev)
print(f"random ipc{ipc}: {r['mean']:.2f} +- {r['std']:.2f}", flush=True)
for lr in lrs:
    t = time.time()
    res = atom.distill(xtr, ytr, ipc=ipc, method=method, iterations=its, batch_real=batch_real, lr_img=lr,
                       net=net, seed=0, progress=False, snapshot_every=its // 3)
    out = [f"lr {lr} ({time.time() - t:.0f}s) loss {res.losses[0]:.2f}->{res.losses[-1]:.2f}:"]
    for it, snap in res.snapshots + [(its, res.images)]:
        r = atom.evaluate(snap, res.labels, xval, yval, **ev)
        out.append(f"it{it} {r['mean']:.2f}+-{r['std']:.2f}")
    print(" ".join(out), flush=True)
