"""The built-in suites; importing this package registers them."""

from kdforge.bench.suites import cifar100, fashion_mnist, llm, overhead, text

__all__ = ["cifar100", "fashion_mnist", "llm", "overhead", "text"]
