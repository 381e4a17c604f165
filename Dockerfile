# audiosep on a CUDA + PyTorch base image. Build: docker build -t audiosep .
# Run:   docker run --gpus all -v "$PWD:/work" audiosep infer --ckpt /work/model.ckpt /work/mix.wav
FROM pytorch/pytorch:2.11.0-cuda12.8-cudnn9-runtime
RUN apt-get update && apt-get install -y --no-install-recommends libsndfile1 && rm -rf /var/lib/apt/lists/*
WORKDIR /opt/audiosep
COPY pyproject.toml README.md ./
COPY audiosep ./audiosep
COPY recipes ./recipes
RUN pip install --no-cache-dir .
WORKDIR /work
ENTRYPOINT ["audiosep"]
CMD ["--help"]
