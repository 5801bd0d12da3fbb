import relay


def test_all_is_complete_and_sorted() -> None:
    public = {
        name
        for name, value in vars(relay).items()
        if not name.startswith("_") and getattr(value, "__module__", "").startswith("relay.")
    }
    assert set(relay.__all__) == public
    assert relay.__all__ == sorted(relay.__all__, key=lambda n: (n[0].islower(), n))
