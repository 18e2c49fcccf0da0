from minique import shared_task

from .models import Order


@shared_task
def mark_paid(order_id):
    order = Order.objects.get(pk=order_id)
    order.paid = True
    order.save()
    return order.item


@shared_task
def count_paid():
    return Order.objects.filter(paid=True).count()
