"""cubed: Cube's REST API served from one Twisted reactor."""
from setuptools import find_packages, setup

setup(
    name="cubed",
    version="0.1.0",
    description="A semantic-layer API server speaking the Cube.js REST API, on Twisted",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.11",
    packages=find_packages(include=["cubed", "cubed.*"]) + ["twisted.plugins"],
    package_data={
        "twisted.plugins": ["cubed_plugin.py"],
        "cubed.demo": ["data/*.csv.gz", "model/*.yml"],
        "cubed.playground": ["index.html", "*.js", "*.css", "vendor/*.js", "vendor/*.md"],
    },
    install_requires=[
        "Twisted[tls]>=24.3",  # rediss:// and https JWK URLs need pyOpenSSL and service_identity
        "klein>=24.8",
        "PyJWT[crypto]>=2.8",
        "txpostgres>=1.7",
        "psycopg2>=2.9",
        "txredisapi>=1.4.10",
        "sqlglot>=30.0,<31",
        "APScheduler>=3.10,<4",
        "duckdb>=1.1",
        "PyMySQL>=1.1,<2",
        "PyYAML>=6.0",
        "prometheus_client>=0.17",
        "tzdata",
    ],
    extras_require={
        "test": ["treq>=23.11", "hypothesis>=6.100", "schemathesis>=4.0,<5"],
    },
    entry_points={"console_scripts": ["cubed = cubed.cli:main"]},
    zip_safe=False,
)
