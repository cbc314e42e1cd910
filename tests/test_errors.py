from __future__ import annotations

import pytest

from asgi_micro import errors


def test_wire_shape() -> None:
    error = errors.NotFound("no item 7", id="inventory")
    assert error.to_dict() == {
        "id": "inventory",
        "code": 404,
        "detail": "no item 7",
        "status": "Not Found",
    }
    assert str(error) == "inventory: 404 Not Found: no item 7"


def test_detail_defaults_to_the_status() -> None:
    assert errors.Timeout().detail == "Request Timeout"


@pytest.mark.parametrize(
    "cls",
    [c for c in vars(errors).values() if isinstance(c, type) and issubclass(c, errors.MicroError)],
)
def test_every_class_round_trips(cls: type[errors.MicroError]) -> None:
    original = cls("detail", id="svc")
    again = errors.MicroError.from_dict(original.to_dict())
    assert type(again) is (
        cls if cls is not errors.ConnectionFailed else errors.ServiceUnavailable
    ) or (type(again) is errors.error_for_status(cls.code))
    assert (again.code, again.detail, again.id) == (cls.code, "detail", "svc")


def test_unknown_codes_keep_their_number() -> None:
    error = errors.MicroError.from_dict({"id": "x", "code": 418, "detail": "teapot", "status": ""})
    assert isinstance(error, errors.BadRequest)
    assert error.code == 418
    assert error.status == "I'm a Teapot"


def test_bodies_that_are_not_our_shape() -> None:
    error = errors.MicroError.from_dict("upstream broke", status_code=502, id="gw")
    assert isinstance(error, errors.BadGateway)
    assert (error.detail, error.id) == ("upstream broke", "gw")
    assert (
        errors.MicroError.from_dict({"message": "x"}, status_code=503).detail == '{"message":"x"}'
    )


def test_family_defaults() -> None:
    assert errors.error_for_status(499) is errors.BadRequest
    assert errors.error_for_status(599) is errors.InternalServerError
    assert issubclass(errors.ConnectionFailed, errors.ServiceUnavailable)
