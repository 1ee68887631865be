#!/bin/bash
# Train the seed's U-Net on several nodes with SLURM: one torchrun agent per node, one process per GPU.
#
#   sbatch examples/slurm_train.sh
#
# --batch-size is the global batch: each of the NODES x GPUS processes takes batch / (NODES x GPUS),
# so it must divide evenly. Only rank 0 writes the run folder, which must be on a file system every
# node sees (the others read the best weights back from it at the end). Resume with --resume RUN on
# any number of nodes or GPUs. A global batch 16x the seed's 32 usually wants a larger learning rate
# with a warm-up; the values below are a starting point to tune, not a measured recipe.
#SBATCH --job-name=unetkit
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1          # torchrun starts the per-GPU processes itself
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=64           # decoding threads / DataLoader workers for all GPUs of a node
#SBATCH --time=04:00:00
#SBATCH --output=%x-%j.out

set -euo pipefail

DATA=${DATA:-/shared/data/carla}      # images/ and masks/ (and val/...) on a shared file system
RUN=${RUN:-runs/carla-$SLURM_JOB_ID}
GPUS_PER_NODE=${SLURM_GPUS_ON_NODE:-8}

# The first node hosts the rendezvous; torchrun sets RANK, WORLD_SIZE, LOCAL_RANK for every process.
MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
MASTER_PORT=${MASTER_PORT:-29500}
export OMP_NUM_THREADS=$(( SLURM_CPUS_PER_TASK / GPUS_PER_NODE ))
# export NCCL_SOCKET_IFNAME=ib0      # name the fast interface if NCCL picks the wrong one
# export NCCL_DEBUG=WARN

srun --kill-on-bad-exit=1 torchrun \
    --nnodes "$SLURM_NNODES" --nproc_per_node "$GPUS_PER_NODE" \
    --rdzv_id "$SLURM_JOB_ID" --rdzv_backend c10d --rdzv_endpoint "$MASTER_ADDR:$MASTER_PORT" \
    -m unetkit train \
        --images "$DATA/train/images" --masks "$DATA/train/masks" \
        --val-images "$DATA/val/images" --val-masks "$DATA/val/masks" \
        --n-classes 23 --input-size 96 128 \
        --batch-size 512 --epochs 40 \
        --schedule cosine --warmup-epochs 2 --lr 0.002 \
        --cache auto --num-workers 4 \
        --no-progress --out "$RUN"
