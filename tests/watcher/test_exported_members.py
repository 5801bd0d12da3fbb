import watcher


def test_all_is_complete_and_sorted() -> None:
    public = {
        name
        for name, value in vars(watcher).items()
        if not name.startswith("_") and getattr(value, "__module__", "").startswith("watcher.")
    }
    assert set(watcher.__all__) == public
    assert watcher.__all__ == sorted(watcher.__all__, key=lambda n: (n[0].islower(), n))
