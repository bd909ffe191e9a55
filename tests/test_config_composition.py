"""The gateway file's composition keys: one-line errors that name the key."""

from __future__ import annotations

import pytest

from fanout.core.config import ConfigError, parse_gateway_config

UPSTREAM = '[upstreams.u]\nbase_url = "http://127.0.0.1:9"\ninternal = true\n'


def _endpoint(*backends: str, extra: str = "", route: str = "/e/<id>") -> str:
    text = f'[[endpoints]]\npath = "{route}"\n{extra}\n'
    for backend in backends:
        text += f'  [[endpoints.backends]]\n  upstream = "u"\n{backend}\n'
    return UPSTREAM + text


def _parse(text: str) -> None:
    parse_gateway_config(text, source="g.toml", env={})


USER = '  path = "/users/{id}"\n  group = "user"'
B1 = "g.toml: endpoints[0].backends[1]"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            _endpoint(USER, '  path = "/c/{company.id}"\n  group = "company"'),
            f"{B1}.path: {{company.id}}: a cycle (the backend reads its own answer)",
        ),
        (
            _endpoint('  path = "/c/{user.company_id}"\n  group = "company"', USER),
            "g.toml: endpoints[0].backends[0].path: {user.company_id}: group 'user' is a later "
            "backend (backends[1]); list it before the backends that read it",
        ),
        (
            _endpoint(USER, '  path = "/c/{person.company_id}"'),
            f"{B1}.path: {{person.company_id}}: unknown group 'person' (earlier groups: user)",
        ),
        (
            _endpoint(USER, '  path = "/p/{item}"\n  group = "p"\n  for_each = "nobody.items[*]"'),
            f"{B1}.for_each: {{nobody.items[*]}}: unknown group 'nobody' (earlier groups: user)",
        ),
        (
            _endpoint(USER, '  path = "/p/{item}"\n  for_each = "user.items[*]"'),
            f"{B1}.group: required with for_each",
        ),
        (
            _endpoint(USER, '  path = "/p/x"\n  group = "p"\n  for_each = "user.items[*]"'),
            f"{B1}.path: expected an {{item}} placeholder",
        ),
        (
            _endpoint(USER, '  path = "/p/{item.sku}"\n  group = "p"'),
            f"{B1}.path: {{item.sku}} needs for_each",
        ),
        (
            _endpoint(USER, '  path = "/p/{item}"\n  group = "p"'),
            f"{B1}.path: placeholder {{item}} is not a variable of the endpoint path",
        ),
        (
            _endpoint('  path = "/p"\n  group = "item"'),
            "g.toml: endpoints[0].backends[0].group: 'item' is reserved for a for_each item",
        ),
        (
            _endpoint(USER, '  path = "/p/{user.items[*].id}"'),
            f"{B1}.path: {{user.items[*].id}}: [*] is for for_each",
        ),
        (
            _endpoint(USER, '  path = "/p/1"\n  max_items = 5'),
            f"{B1}.max_items: only applies with for_each",
        ),
        (
            _endpoint(
                USER,
                '  path = "/p/{item}"\n  group = "p"\n  for_each = "user.x[*]"\n  concurrency = 0',
            ),
            f"{B1}.concurrency: expected an integer from 1 to 100, got 0",
        ),
        (
            _endpoint('  path = "/l"\n  collection = true'),
            "g.toml: endpoints[0].backends[0].group: required with collection = true",
        ),
        (
            _endpoint(USER + "\n  required = true\n  fallback = { a = 1 }"),
            "g.toml: endpoints[0].backends[0].fallback: a required backend fails the endpoint",
        ),
        (
            _endpoint(USER + '\n  fallback = "none"'),
            "g.toml: endpoints[0].backends[0].fallback: expected a table or an array, got 'none'",
        ),
        (
            _endpoint(USER + '\n  target = "data..user"'),
            "g.toml: endpoints[0].backends[0].target: expected a dotted field path",
        ),
        (
            _endpoint(USER + '\n  rename = { a = "b.c" }'),
            "g.toml: endpoints[0].backends[0].rename.a: expected a top-level key (no",
        ),
        (
            _endpoint(USER, '  path = "/x"\n  allow = ["user"]'),
            f"{B1}: writes 'user', as backends[0] does; set the endpoint's on_conflict to "
            "last, first, list",
        ),
        (
            _endpoint(
                '  path = "/a"\n  rename = { n = "name" }', '  path = "/b"\n  allow = ["name"]'
            ),
            f"{B1}: writes 'name', as backends[0] does",
        ),
        (
            _endpoint(USER, '  path = "/x"\n  allow = ["user"]', extra='on_conflict = "both"'),
            "g.toml: endpoints[0].on_conflict: expected one of last, first, list, got 'both'",
        ),
        (
            _endpoint('  path = "/a"', '  path = "/b"', extra='method = "POST"'),
            "g.toml: endpoints[0].backends: a POST endpoint with several backends sends its "
            "body to one: mark it write = true",
        ),
        (
            _endpoint(
                '  path = "/a"\n  write = true',
                '  path = "/b"\n  write = true',
                extra='method = "PUT"',
            ),
            f"{B1}.write: backends[0] already receives the body",
        ),
        (
            _endpoint('  path = "/a"\n  write = true'),
            "g.toml: endpoints[0].backends[0].write: only for an endpoint with a body",
        ),
    ],
)
def test_composition_errors_name_the_key(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        _parse(text)
    assert str(caught.value).startswith(message), str(caught.value)
    assert "\n" not in str(caught.value)


def test_a_route_variable_named_item_is_still_one() -> None:
    config = parse_gateway_config(
        _endpoint('  path = "/p/{item}"', route="/items/<item>"), source="g.toml", env={}
    )
    assert config.endpoints[0].backends[0].path == "/p/{item}"


def test_a_valid_composition_parses() -> None:
    config = parse_gateway_config(
        _endpoint(
            USER + '\n  target = "data.user"\n  rename = { name = "full_name" }',
            '  path = "/c/{user.company_id}?x={id}"\n  group = "company"\n  fallback = {}',
            '  path = "/p/{item}"\n  group = "p"\n  for_each = "user.items[*].sku"\n'
            "  max_items = 20\n  concurrency = 2",
            '  path = "/l"\n  group = "list"\n  collection = true\n  deny = ["secret"]',
        )
        + _endpoint(
            '  path = "/a"\n  write = true',
            '  path = "/b"',
            extra='method = "POST"\non_conflict = "list"',
            route="/w",
        ).removeprefix(UPSTREAM),
        source="g.toml",
        env={},
    )
    first, write = config.endpoints
    user, company, products, listing = first.backends
    assert (user.target, user.rename) == ("data.user", (("name", "full_name"),))
    assert company.fallback == {}
    assert (products.for_each, products.max_items, products.concurrency) == (
        "user.items[*].sku",
        20,
        2,
    )
    assert listing.collection
    assert write.on_conflict == "list" and [b.write for b in write.backends] == [True, False]
