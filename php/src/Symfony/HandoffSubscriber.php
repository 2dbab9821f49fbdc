<?php

declare(strict_types=1);

namespace Handoff\Symfony;

use Symfony\Component\EventDispatcher\EventSubscriberInterface;
use Symfony\Component\HttpFoundation\BinaryFileResponse;
use Symfony\Component\HttpKernel\Event\ResponseEvent;
use Symfony\Component\HttpKernel\KernelEvents;

/**
 * Hands off every download of an application: on `kernel.response` it replaces each
 * BinaryFileResponse of a main request by the same {@see HandoffFileResponse} (file,
 * status, headers and cookies, content disposition, deleteFileAfterSend()), the way
 * BinaryFileResponse::trustXSendfileTypeHeader() turns them all into X-Sendfile. It runs
 * before HttpKernel's ResponseListener (priority 0), which prepares the response for the
 * request, so Range and the conditionals are left to send_file().
 *
 * Register it as a service tagged `kernel.event_subscriber` (autoconfigured services are),
 * or with `$dispatcher->addSubscriber(new HandoffSubscriber([...]))`. Without the extension
 * it changes nothing.
 */
final class HandoffSubscriber implements EventSubscriberInterface
{
    /** Above ResponseListener's 0. */
    public const PRIORITY = 8;

    /**
     * @param array{tag?: string, rate?: int, rate_group?: string, delete?: bool} $options
     *        send_file() options for every download; `delete` => true deletes every file
     *        after sending (deleteFileAfterSend() on one response does that for one)
     */
    public function __construct(private array $options = [])
    {
        // Unknown keys fail here, at container build, not on the first download.
        HandoffFileResponse::checkHandoffOptions($options);
    }

    public static function getSubscribedEvents(): array
    {
        return [KernelEvents::RESPONSE => ['onKernelResponse', self::PRIORITY]];
    }

    public function onKernelResponse(ResponseEvent $event): void
    {
        $response = $event->getResponse();
        if (!$event->isMainRequest() || !$response instanceof BinaryFileResponse
            || $response instanceof HandoffFileResponse || !HandoffFileResponse::handoffAvailable()) {
            return;
        }
        $options = $this->options;
        if (empty($options['delete'])) {
            // The response's own deleteFileAfterSend() is kept by fromBinaryFileResponse().
            unset($options['delete']);
        }
        $event->setResponse(HandoffFileResponse::fromBinaryFileResponse($response, $options));
    }
}
