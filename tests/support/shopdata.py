"""The shop data set (the conformance tables users, products, orders, line_items) in a test
PostgreSQL database.

The schema below is /work/shared/conformance/data/schema.sql verbatim (what the real Cube ran
on when the conformance answers were recorded); the rows come from the gzipped CSV copies
bundled in ``cubed/demo/data``, so the tests do not depend on files outside the checkout.
Nothing is cached: each call loads a fresh database.
"""
from __future__ import annotations

import gzip
from typing import Any

import psycopg2
from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThread
from twisted.trial import unittest

from cubed.config import DataSourceSettings
from cubed.demo import DEMO_TABLES, demo_csv
from tests.support.services import create_test_database

SHOP_TABLES = tuple(table.name for table in DEMO_TABLES)
SHOP_ROW_COUNTS = {table.name: table.rows for table in DEMO_TABLES}

SCHEMA_SQL = """\
SET client_min_messages = warning;
DROP TABLE IF EXISTS public.line_items;
DROP TABLE IF EXISTS public.orders;
DROP TABLE IF EXISTS public.products;
DROP TABLE IF EXISTS public.users;

CREATE TABLE public.users (
    id integer NOT NULL,
    first_name text,
    last_name text,
    city text,
    state text,
    gender text,
    company text,
    created_at timestamp without time zone NOT NULL,
    CONSTRAINT users_pkey PRIMARY KEY (id)
);

CREATE TABLE public.products (
    id integer NOT NULL,
    name text NOT NULL,
    category text,
    price numeric(10,2) NOT NULL,
    created_at timestamp without time zone NOT NULL,
    CONSTRAINT products_pkey PRIMARY KEY (id)
);

CREATE TABLE public.orders (
    id integer NOT NULL,
    user_id integer,
    status text NOT NULL,
    amount numeric(12,2),
    created_at timestamp without time zone NOT NULL,
    completed_at timestamp without time zone,
    CONSTRAINT orders_pkey PRIMARY KEY (id)
);

CREATE TABLE public.line_items (
    id integer NOT NULL,
    order_id integer NOT NULL,
    product_id integer NOT NULL,
    quantity integer NOT NULL,
    price numeric(10,2) NOT NULL,
    created_at timestamp without time zone NOT NULL,
    CONSTRAINT line_items_pkey PRIMARY KEY (id)
);

CREATE INDEX orders_created_at_idx ON public.orders USING btree (created_at);
CREATE INDEX orders_user_id_idx ON public.orders USING btree (user_id);
CREATE INDEX line_items_order_id_idx ON public.line_items USING btree (order_id);
CREATE INDEX line_items_product_id_idx ON public.line_items USING btree (product_id);
"""


def _connect(settings: DataSourceSettings) -> Any:
    return psycopg2.connect(
        host=settings.host, port=settings.port, dbname=settings.database,
        user=settings.user, password=settings.password, connect_timeout=5,
    )


def load_shop_data_blocking(settings: DataSourceSettings) -> dict[str, int]:
    """Create the four tables in ``settings.database`` and COPY the CSVs into them; return
    ``{table: rows loaded}``. Blocking: run it in a thread."""
    connection = _connect(settings)
    try:
        with connection:
            with connection.cursor() as cursor:
                cursor.execute(SCHEMA_SQL)
                for table in SHOP_TABLES:
                    with gzip.open(demo_csv(table), "rb") as source:
                        cursor.copy_expert(f"COPY public.{table} FROM STDIN WITH (FORMAT csv, HEADER true)", source)
        connection.autocommit = True
        counts: dict[str, int] = {}
        with connection.cursor() as cursor:
            for table in SHOP_TABLES:
                cursor.execute(f"ANALYZE public.{table}")
                cursor.execute(f"SELECT count(*) FROM public.{table}")
                counts[table] = cursor.fetchone()[0]
        return counts
    finally:
        connection.close()


def load_shop_data(settings: DataSourceSettings) -> Deferred[dict[str, int]]:
    """Load the shop tables into the database of ``settings`` off the reactor thread; return a
    Deferred firing with ``{table: rows loaded}``."""
    return deferToThread(load_shop_data_blocking, settings)


def shop_database(testcase: unittest.TestCase, **changes: Any) -> Deferred[DataSourceSettings]:
    """Create a test database (dropped at cleanup), load the shop data into it and return a
    Deferred firing with its DataSourceSettings (``changes`` override fields)."""
    d = create_test_database(testcase, **changes)

    def load(settings: DataSourceSettings) -> Deferred[DataSourceSettings]:
        return load_shop_data(settings).addCallback(lambda _: settings)

    return d.addCallback(load)
