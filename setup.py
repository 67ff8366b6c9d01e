"""dns-tf: Distill-and-Select video retrieval on TensorFlow/Keras, served with TF Serving."""
from setuptools import find_packages, setup

setup(
    name="dns-tf",
    version="0.1.0",
    description="DnS (Distill-and-Select) video retrieval in Keras 3, served with TF Serving",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10,<3.13",
    packages=find_packages(include=["dns_tf*", "training*", "serving*"]),
    install_requires=[
        "tensorflow==2.20.*",
        "keras>=3.10,<4",
        "tensorflow-serving-api==2.20.*",
        "scann==1.4.2",
        "grpcio>=1.60",
        "numpy>=2,<3",
        "h5py>=3.10",
        "av>=12",
        "imageio-ffmpeg>=0.5",
        "tqdm>=4.66",
        "matplotlib>=3.8",
        "google-crc32c>=1.5",  # TFRecord record checksums, checked on read
        "scikit-learn>=1.4",
    ],
    extras_require={"test": ["pytest>=8", "pytest-timeout>=2.3", "hypothesis>=6.100",
                             "import-linter>=2.17"],
                    # `dns-tf beam`: corpus-scale extraction and indexing pipelines
                    "beam": ["apache-beam==2.77.*"]},
    entry_points={"console_scripts": ["dns-tf=dns_tf.cli:main"]},
)
