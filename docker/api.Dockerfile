# xling api: CPU image. Build from the repository root: docker build -f docker/api.Dockerfile .
FROM python:3.11-slim
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
# The CPU build of torch first, so the project's `torch` requirement does not pull CUDA wheels.
RUN pip install --index-url https://download.pytorch.org/whl/cpu torch \
 && pip install '.[offline]'
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=120s \
  CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/readyz')" || exit 1
CMD ["xling", "serve", "--host", "0.0.0.0", "--port", "8000"]
