# TF Serving image with the exported DnS models.
#
#   dns-tf export --coarse cg.pth --fine fg_bin.pth --selector selector.pth \
#       [--teacher visil.pth] [--features resnet50.pth --pca pca.pth] [--index videos.idx] \
#       --out export --serving_root /models
#   docker build -t dns-tf-serving .                        # CPU
#   docker build -t dns-tf-serving:gpu --build-arg TF_SERVING_TAG=latest-gpu .
#   docker run --rm -p 8500:8500 -p 8501:8501 dns-tf-serving
#   docker run --rm --gpus all -p 8500:8500 -p 8501:8501 dns-tf-serving:gpu
#
# The export's models.config must point at /models (export with --serving_root /models); the build
# stops otherwise. Extra tensorflow_model_server flags go after the image name. XLA on CPU runs the
# binarization student's popcount kernel (fine_similarity, the resident store's rerank); the GPU
# image runs it on the GPU and ignores the flag.
ARG TF_SERVING_TAG=latest
FROM tensorflow/serving:${TF_SERVING_TAG}

ARG EXPORT_DIR=export
COPY ${EXPORT_DIR}/ /models/
RUN grep -q 'base_path: "/models/' /models/models.config || { \
      echo "/models/models.config does not point at /models: run dns-tf export with --serving_root /models" >&2; \
      exit 1; }

# gRPC and REST.
EXPOSE 8500 8501
ENTRYPOINT ["tensorflow_model_server", "--port=8500", "--rest_api_port=8501", \
            "--model_config_file=/models/models.config", "--xla_cpu_compilation_enabled=true", \
            "--enable_batching", "--batching_parameters_file=/models/batching_parameters.txt"]
CMD []
