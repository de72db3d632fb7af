# xling worker: CUDA image with faiss-gpu. Build from the repository root: docker build -f docker/worker.Dockerfile .
FROM pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 XLING_DATA_DIR=/data
WORKDIR /app
COPY pyproject.toml README.md ./
# The top folders are the subpackages of `xling` (pyproject.toml maps xling to this folder).
COPY app ./app
COPY cli ./cli
COPY models ./models
COPY serving ./serving
COPY state ./state
COPY worker ./worker
# faiss-gpu-cu12 provides the same `faiss` module as faiss-cpu: install the project, then swap them.
RUN pip install '.[offline]' \
 && pip uninstall -y faiss-cpu \
 && pip install faiss-gpu-cu12
CMD ["xling", "worker"]
