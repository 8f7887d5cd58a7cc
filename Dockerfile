# The package for the background-job services of docker-compose.yml (worker, scheduler). The
# repository itself is mounted at /app at run time, so the containers share data/ (dataset
# versions, the registry) with the commands run on the host.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml requirements.lock ./
COPY healthmate_features ./healthmate_features
RUN pip install --no-cache-dir -c requirements.lock -e .
