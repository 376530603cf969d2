from setuptools import find_packages, setup

setup(
    name="sozu",
    version="0.1.0",
    description="A prefork reverse proxy for HTTP/1.1, HTTPS and TCP that never needs a restart",
    python_requires=">=3.11",
    packages=find_packages(include=["sozu", "sozu.*"]),
    install_requires=[
        "gevent>=24.2",
        "pyOpenSSL>=24.0",
        "docopt>=0.6.2",
        "python-prctl>=1.8",
        "pyseccomp>=0.1.2",
        "h2>=4.1",
        "httptools>=0.9",  # llhttp: sozu.http.parser reads HTTP/1 heads with it
        'tomli>=2.0; python_version < "3.11"',
        "etcd3gw>=2.4",
    ],
    extras_require={"test": ["pytest>=8", "pytest-timeout>=2.3", "hypothesis>=6.100",
                             "prometheus_client>=0.17", "atheris>=2.3",
                             "pytest-xdist>=3.5"]},
    entry_points={
        "console_scripts": [
            "sozu = sozu.cli:main",
            "sozuctl = sozu.ctl.cli:main",
        ]
    },
)
